"""``[[apps]] kind = "clocks.compare"``: the spec; consecutive nodes need entanglement links."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from emulator.physics import clocks
from emulator.scenario import Name, Scenario, ScenarioError


class ClocksApp(Struct, tag="clocks.compare", tag_field="kind", forbid_unknown_fields=True):
    """Compare the clocks of ``nodes`` (a chain: each next to the following one by an
    entanglement link) with ``rounds`` Bell (2 nodes) or GHZ states, each interrogated
    ``interrogation_s``, and with ``rounds`` unentangled Ramsey qubits per node. The estimated
    quantity is D = sum_i signs[i] detuning_i (default signs +1, -1, +1, ...: a - b for two)."""

    nodes: list[Name]
    rounds: Annotated[int, Meta(ge=1, le=1_000_000)] = 200
    interrogation_s: Annotated[float, Meta(gt=0, le=100)] = 0.1
    signs: list[int] | None = None
    in_flight: Annotated[int, Meta(ge=1, le=1000)] = 8  # rounds interrogated at once
    max_age_s: Annotated[float, Meta(gt=0)] = 0.1  # older heralded pairs are dropped

    def sign_list(self) -> list[int]:
        return self.signs if self.signs is not None else clocks.default_signs(len(self.nodes))


def validate(sc: Scenario, i: int, app: ClocksApp) -> None:
    where = f"apps[{i}]"
    if len(app.nodes) < 2 or len(set(app.nodes)) != len(app.nodes):
        raise ScenarioError(f"{where}.nodes: give at least two distinct nodes")
    signs = app.sign_list()
    if len(signs) != len(app.nodes) or any(s not in (1, -1) for s in signs) or signs[0] != 1:
        raise ScenarioError(f"{where}.signs: one +1 or -1 per node, the first +1")
    for a, b in zip(app.nodes, app.nodes[1:]):
        sc.require_entanglement_link(i, a, b, None)
