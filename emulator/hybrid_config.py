"""Scenario parts of hybrid packets: a fibre that carries flying qubits (``[links.flight]``), a
node's delay line and drift compensation (``[nodes.hybrid]``), and the model of a path.

The daemon reads the first two (``emulator.daemon.links.flight``); nodes see only their own
``compensate`` flag; the orchestrator turns a flow's path into ``physics.flight.Hop``s for
``flow_model`` (the prediction is never computed by nodes). Documented in docs/scenarios.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated

from msgspec import Meta, Struct

from emulator.physics.flight import FlowPrediction, Hop, flow_model, late_fraction

NonNegative = Annotated[float, Meta(ge=0)]


class LinkFlight(Struct, forbid_unknown_fields=True):
    """``[links.flight]``: photonic qubits may be sent through this fibre. ``noise_photons``:
    Raman photons per gate in the payload's mode at the fibre's output (``raman.noise_photons``
    at the configured duty cycle, efficiency 1); ``estimation_sigma_rad``: per-axis error of
    the far end's readout of the header's reference polarisations."""

    attenuation_db_per_km: NonNegative = 0.2
    diffusion_rad2_per_s: NonNegative = 0.0
    estimation_sigma_rad: NonNegative = 0.0
    noise_photons: NonNegative = 0.0


class NodeHybrid(Struct, forbid_unknown_fields=True):
    """``[nodes.hybrid]``: a router's delay line (``switch_budget_us`` = 0: none, a payload
    arriving here is stored in the node's memory) and whether the node corrects the drift of
    the fibre a payload arrived on from the header's reference readout."""

    switch_budget_us: NonNegative = 0.0
    delay_line_db_per_us: NonNegative = 0.0
    compensate: bool = True


class FlightFibre(Struct):
    """A ``[links.flight]`` fibre as the daemon sees it."""

    name: str
    a: str
    b: str
    length_km: float
    flight: LinkFlight


class NoFlightFibre(ValueError):
    """A path crosses a link without ``[links.flight]``: no payload can take it, no model."""


def flight_connected(links: Sequence, a: str, b: str) -> bool:
    """Whether ``b`` can be reached from ``a`` over ``[links.flight]`` fibres alone (scenario
    links): if not, no route ever carries a payload between them."""
    seen, todo = {a}, [a]
    while todo:
        node = todo.pop()
        for link in links:
            if link.flight is not None and node in (link.a, link.b):
                other = link.b if node == link.a else link.a
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
    return b in seen


def path_hops(path: Sequence[str], fibres: Mapping[frozenset, FlightFibre],
              nodes: Mapping[str, NodeHybrid]) -> list[Hop]:
    """``physics.flight.Hop`` per fibre of ``path`` (node names, source first): the fibre's
    physics and its far end's delay line and compensation (a destination with a delay
    line stores its payloads from it). ``NoFlightFibre`` if a hop has no flight fibre."""
    hops = []
    for near, far in zip(path, path[1:]):
        if frozenset((near, far)) not in fibres:
            raise NoFlightFibre(f"the path crosses {near}-{far}, which has no [links.flight]")
        fibre = fibres[frozenset((near, far))].flight
        end = nodes.get(far, NodeHybrid())
        hops.append(Hop(
            length_km=fibres[frozenset((near, far))].length_km,
            attenuation_db_per_km=fibre.attenuation_db_per_km,
            drift_rad2_per_s=fibre.diffusion_rad2_per_s, noise_photons=fibre.noise_photons,
            compensated=end.compensate, estimation_sigma_rad=fibre.estimation_sigma_rad,
            switch_budget_us=end.switch_budget_us,
            delay_line_db_per_us=end.delay_line_db_per_us))
    return hops


def flow_prediction(scenario, path: Sequence[str], send_times: Sequence[float],
                    decision_us: Mapping[str, Sequence[float]]) -> FlowPrediction:
    """The model of a flow over ``path`` (from the scenario's physics): ``flow_model`` at its
    send times since its first (the daemon calibrates each fibre, U = I, as the first payload
    crosses it), with each router's late share from its measured decision latencies
    (``late_fraction``; none measured, none late). ``NoFlightFibre`` as ``path_hops``."""
    fibres = {frozenset((x.a, x.b)): FlightFibre(x.id, x.a, x.b, x.length_km, x.flight)
              for x in scenario.links if x.flight is not None}
    nodes = {n.name: n.hybrid for n in scenario.nodes if n.hybrid is not None}
    hops = path_hops(path, fibres, nodes)
    late = [late_fraction(decision_us.get(far, []), hop.switch_budget_us)
            if hop.switch_budget_us > 0 else 0.0 for far, hop in zip(path[1:], hops)]
    since = [t - min(send_times) for t in send_times]
    return flow_model(hops, since, late=late)


def daemon_counts(sections: dict, daemon_report: Mapping | None) -> None:
    """Fill each ``hybrid`` entry's ``router_measurements`` (the daemon's measurement count
    of the routers on its paths at start and end: they may switch and rotate, never
    measure) in place."""
    measured = (daemon_report or {}).get("measurements")
    if measured is None:
        return
    for entry in sections.get("hybrid", []):
        routers = {n for key in ("path", "path_at_end") for n in (entry.get(key) or [])[1:-1]}
        entry["router_measurements"] = sum(int(measured.get(n, 0)) for n in routers)
