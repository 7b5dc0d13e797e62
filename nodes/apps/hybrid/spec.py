"""``[[apps]] kind = "hybrid.send"``: a stream of hybrid packets from ``src`` to ``dst``."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from emulator.hybrid_config import flight_connected
from emulator.scenario import Name, NonNegative, Scenario, ScenarioError


class HybridSendApp(Struct, tag="hybrid.send", tag_field="kind", forbid_unknown_fields=True):
    """``src`` sends ``rate_hz`` hybrid packets per emulated second from ``start_s`` until
    ``stop_before_end_s`` before the end (at most ``count``, 0 = no limit): each carries one
    half of a Bell pair whose other half ``src`` keeps (``payload = "pair"``) or one of the six
    axis states (``"state"``); ``dst`` measures each in a random Pauli basis. ``routers`` (every
    other node with a ``[links.flight]`` fibre) run the hybrid plane; validation fills it."""

    src: Name
    dst: Name
    flow: Annotated[int, Meta(ge=1, le=0xFFFFFFFF)] | None = None  # default 1 + app index
    payload: Literal["pair", "state"] = "pair"
    rate_hz: Annotated[float, Meta(gt=0, le=20_000)] = 200.0
    count: Annotated[int, Meta(ge=0)] = 0
    start_s: NonNegative = 0.5
    stop_before_end_s: NonNegative = 1.0
    ttl: Annotated[int, Meta(ge=1, le=255)] = 16
    port: Annotated[int, Meta(ge=1, le=65535)] | None = None  # exchange stream, 2000 + index
    routers: list[Name] = []


def flight_nodes(sc: Scenario) -> set[str]:
    return {end for link in sc.links if link.flight is not None for end in (link.a, link.b)}


def nodes(app: HybridSendApp) -> list[str]:
    return [app.src, app.dst, *app.routers]


def validate(sc: Scenario, i: int, app: HybridSendApp) -> None:
    """Ends differ and have a fibre; routers filled (a destination with a delay line stores
    its payloads from it, within its budget)."""
    if app.src == app.dst:
        raise ScenarioError(f"apps[{i}].dst: the two ends must differ")
    capable = flight_nodes(sc)
    for field in ("src", "dst"):
        if getattr(app, field) not in capable:
            raise ScenarioError(f"apps[{i}].{field}: {getattr(app, field)!r} has no "
                                f"[links.flight] fibre")
    if not flight_connected(sc.links, app.src, app.dst):
        raise ScenarioError(f"apps[{i}].dst: {app.dst!r} cannot be reached from {app.src!r} "
                            f"over [links.flight] fibres")
    if app.start_s + app.stop_before_end_s >= sc.scenario.duration_s:
        raise ScenarioError(f"apps[{i}].stop_before_end_s: start_s + stop_before_end_s must "
                            f"be shorter than the run ({sc.scenario.duration_s:g} s)")
    app.flow = 1 + i if app.flow is None else app.flow
    app.port = 2000 + i if app.port is None else app.port
    app.routers = sorted(capable - {app.src, app.dst})
