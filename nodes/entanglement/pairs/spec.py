"""``[[apps]] kind = "entanglement.pairs"``: the spec, its path resolution, its nodes."""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Literal

from msgspec import Meta, Struct

from emulator.scenario import Name, Scenario, ScenarioError

Purification = Literal["none", "bbpssw", "dejmps"]


class PairsApp(Struct, tag="entanglement.pairs", tag_field="kind", forbid_unknown_fields=True):
    """End-to-end pairs between ``a`` and ``b`` over ``path`` (repeaters in order; empty =
    shortest path over entanglement links), swapped at the repeaters, optionally purified,
    then measured in random Pauli bases to estimate the fidelity."""

    a: Name
    b: Name
    path: list[Name] = []
    count: Annotated[int, Meta(ge=1, le=10_000_000)] = 1000
    target_fidelity: Annotated[float, Meta(ge=0, le=1)] = 0.0
    purification: Purification = "none"
    purification_rounds: Annotated[int, Meta(ge=0, le=8)] = 0
    name: Name | None = None


def nodes(app: PairsApp) -> list[str]:
    """Every node on the (resolved) path runs the app: the ends and each repeater."""
    return [app.a, *app.path, app.b]


def validate(sc: Scenario, i: int, app: PairsApp) -> None:
    """Check the purification settings and resolve ``path`` (shortest one when empty)."""
    if app.a == app.b:
        raise ScenarioError(f"apps[{i}].b: the two ends must differ")
    if (app.purification == "none") != (app.purification_rounds == 0):
        raise ScenarioError(f"apps[{i}].purification_rounds: give rounds > 0 exactly "
                            f"when purification is not 'none'")
    full = [app.a, *app.path, app.b] if app.path else sc.shortest_path(app.a, app.b)
    if full is None:
        raise ScenarioError(f"apps[{i}].path: no path of entanglement links from "
                            f"{app.a!r} to {app.b!r}")
    if len(set(full)) != len(full):
        raise ScenarioError(f"apps[{i}].path: a node appears twice")
    for k, (u, v) in enumerate(pairwise(full)):
        link = sc.link_between(u, v)
        if link is None or link.entanglement is None:
            raise ScenarioError(f"apps[{i}].path[{k}]: no entanglement link between "
                                f"{u!r} and {v!r}")
    app.path = full[1:-1]
