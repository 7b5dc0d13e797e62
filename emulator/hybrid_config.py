"""Scenario parts of hybrid packets: a fibre that carries flying qubits (``[links.flight]``), a
node's delay line and drift compensation (``[nodes.hybrid]``), and the model of a path.

The daemon reads the first two (``emulator.daemon.links.flight``); nodes see only their own
``compensate`` flag; the orchestrator turns each path a flow's sender routed over into
``physics.flight.Hop``s for ``flow_model`` and mixes them by the packets sent on each, less
those the scenario's cuts took (``flow_mixture``; never computed by nodes). Documented in
docs/scenarios.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated

import numpy as np
from msgspec import Meta, Struct

from emulator.physics.channels import fibre_delay
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


AMBIGUITY_S = 0.05  # emulated s about a cut's edge or a reroute where a packet's fate is open


class CutWindow(Struct, frozen=True):
    """A link cut (any plane) from ``start`` to ``end``, emulated seconds since the epoch."""

    link: frozenset
    start: float
    end: float


def cut_windows(scenario, t_start: float) -> list[CutWindow]:
    """The scenario's scheduled ``[[faults]]`` cuts as windows: a cut lasts ``for_s``, or until
    the next ``restore`` of its link, or to the end of the run (at_s counts from ``t_start``,
    the apps' start)."""
    ends = {x.id: frozenset((x.a, x.b)) for x in scenario.links}
    faults = sorted((f for f in scenario.faults if f.link is not None), key=lambda f: f.at_s)
    out = []
    for i, fault in enumerate(faults):
        if fault.action != "cut":
            continue
        stop = fault.at_s + fault.for_s if fault.for_s is not None else math.inf
        stop = min([stop] + [f.at_s for f in faults[i + 1:]
                             if f.link == fault.link and f.action == "restore"])
        if fault.link in ends:
            out.append(CutWindow(ends[fault.link], t_start + fault.at_s, t_start + stop))
    return out


class SegmentModel(Struct):
    """The packets a sender sent while its route was ``path`` (from ``first_seq``): how many,
    how many the cuts took (their payload entered the fibre of a link while it was cut), how
    many are open (``ambiguous``), and for the others ``flow_model``'s fractions and
    fidelities (None: every packet was lost on a cut)."""

    first_seq: int
    path: list[str]
    sent: int
    lost_on_cut: int
    ambiguous: int
    delivered: float
    lost_in_fibre: float
    late: float
    fidelity: float | None
    pair_fidelity: float | None


class FlowMixture(Struct):
    """A flow's model over its path segments: fractions of all it sent (``lost_on_cut``
    included; they sum to 1), the binomial standard error of each measured share
    (sqrt(sum_i n_i p_i (1 - p_i))/n over the packets not lost on a cut, a point mass), the
    fidelities weighted by each segment's expected delivered count, and ``ambiguous``: packets
    whose fate the model cannot tell (a tolerance in counts, not a probability)."""

    delivered: float
    lost_in_fibre: float
    late: float
    lost_on_cut: float
    delivered_se: float
    lost_in_fibre_se: float
    late_se: float
    ambiguous: int
    fidelity: float | None
    pair_fidelity: float | None
    fidelity_spread: float | None
    pair_fidelity_spread: float | None
    segments: list[SegmentModel]


def flow_mixture(scenario, segments: Sequence[tuple[int, Sequence[str]]],
                 send_times: Sequence[float], decision_us: Mapping[str, Sequence[float]],
                 cuts: Sequence[CutWindow] = (), ambiguity_s: float = AMBIGUITY_S
                 ) -> FlowMixture:
    """The model of a flow whose sender recorded ``segments`` ((first seq, path) at each route
    change; packet seq was sent at ``send_times[seq]``), from the scenario's physics.

    A packet is lost on a cut when its payload enters a fibre of its path while that link
    is cut (``cuts``): its header is then blocked too, or the payload dies in the cut fibre.
    It is ``ambiguous`` when a cut's edge lies within ``ambiguity_s`` of that instant (or of
    its header's, up to a spool earlier) — the fault reaches the relay and the daemon some
    ms after its scheduled time — or when it was sent within ``ambiguity_s`` of a route
    change (the routers next to a cut reroute before the sender hears of it). Every other
    packet of a segment gets ``flow_model`` of the segment's path at its time since the
    flow's first packet on that path (the daemon calibrates a fibre, U = I, as the first
    payload crosses it: exact per fibre when the path's far ends compensate, which makes λ
    time-independent), with each router's late share from its measured decision latencies
    of this flow (``decision_us``: node -> samples; ``late_fraction``; none measured, none
    late). ``NoFlightFibre`` as ``path_hops``."""
    fibres = {frozenset((x.a, x.b)): FlightFibre(x.id, x.a, x.b, x.length_km, x.flight)
              for x in scenario.links if x.flight is not None}
    nodes = {n.name: n.hybrid for n in scenario.nodes if n.hybrid is not None}
    times = np.asarray(send_times, dtype=np.float64)
    n = times.size
    if n == 0:
        raise ValueError("a flow needs at least one send time")
    firsts = [int(s) for s, _ in segments] + [n]
    switches = times[[s for s in firsts[1:-1] if s < n]]
    calibrated: dict[tuple, float] = {}
    rows: list[SegmentModel] = []
    mixed: list[tuple[float, FlowPrediction]] = []  # (expected delivered, model) per segment
    totals, var = np.zeros(3), np.zeros(3)  # expected delivered, lost_in_fibre, late
    for (first, path), stop in zip(segments, firsts[1:]):
        t, path = times[int(first):stop], list(path)
        hops = path_hops(path, fibres, nodes)
        if t.size == 0:
            continue
        calibrated.setdefault(tuple(path), float(t[0]))
        on_cut, open_ = _cut_fates(t, path, hops, cuts, ambiguity_s)
        if switches.size:
            open_ |= np.min(np.abs(t[:, None] - switches[None, :]), axis=1) <= ambiguity_s
        ok = t[~on_cut]
        shares, fid, pair = np.zeros(3), None, None
        if ok.size:
            late = [late_fraction(decision_us.get(end, []), hop.switch_budget_us)
                    if hop.switch_budget_us > 0 else 0.0 for end, hop in zip(path[1:], hops)]
            model = flow_model(hops, ok - calibrated[tuple(path)], late=late)
            shares = np.array([model.delivered, model.lost_in_fibre, model.late])
            totals += ok.size * shares
            var += ok.size * shares * (1 - shares)
            fid, pair = model.fidelity, model.pair_fidelity
            mixed.append((ok.size * model.delivered, model))
        rows.append(SegmentModel(int(first), path, int(t.size), int(on_cut.sum()),
                                 int(open_.sum()), *(float(x) for x in shares), fid, pair))
    weight = sum(w for w, _ in mixed)
    fidelity = pair_fidelity = spread = pair_spread = None
    if weight > 0:
        fidelity = sum(w * m.fidelity for w, m in mixed) / weight
        pair_fidelity = sum(w * m.pair_fidelity for w, m in mixed) / weight
        spread = math.sqrt(sum((w * m.fidelity_spread) ** 2 for w, m in mixed)) / weight
        pair_spread = math.sqrt(sum((w * m.pair_fidelity_spread) ** 2
                                    for w, m in mixed)) / weight
    se = np.sqrt(var) / n
    return FlowMixture(*(float(x) for x in totals / n), sum(r.lost_on_cut for r in rows) / n,
                       *(float(x) for x in se), sum(r.ambiguous for r in rows),
                       fidelity, pair_fidelity, spread, pair_spread, rows)


def _cut_fates(t: np.ndarray, path: list[str], hops: Sequence[Hop],
               cuts: Sequence[CutWindow], ambiguity_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(lost on a cut, ambiguous) for packets sent over ``path`` at ``t``: a payload entering
    hop k's fibre while the link is cut; a cut edge within ``ambiguity_s`` of that instant or
    of the header's (up to the near router's budget earlier)."""
    enter = np.cumsum([0.0] + [float(fibre_delay(h.length_km)) + h.switch_budget_us * 1e-6
                               for h in hops[:-1]])
    lead = [0.0] + [h.switch_budget_us * 1e-6 for h in hops[:-1]]
    on_cut = np.zeros(t.size, dtype=bool)
    open_ = np.zeros(t.size, dtype=bool)
    for k, link in enumerate(frozenset(hop) for hop in zip(path, path[1:])):
        at = t + enter[k]
        for cut in (c for c in cuts if c.link == link):
            on_cut |= (at >= cut.start) & (at < cut.end)
            for edge in (cut.start, cut.end):
                open_ |= (at - lead[k] - ambiguity_s <= edge) & (edge <= at + ambiguity_s)
    return on_cut, open_


def daemon_counts(sections: dict, daemon_report: Mapping | None) -> None:
    """Fill each ``hybrid`` entry's ``router_measurements`` in place: the daemon's measurement
    count of the routers on every path its sender's route took (they may switch and rotate,
    never measure), less what a router that is another flow's end measured as that end (one
    per packet its sender kept a half of, one per payload its destination delivered): the
    daemon counts per node."""
    measured = (daemon_report or {}).get("measurements")
    if measured is None:
        return
    flows = sections.get("hybrid", [])
    own: dict[str, int] = {}
    for entry in flows:
        if entry.get("payload") == "pair":
            own[entry["src"]] = own.get(entry["src"], 0) + (entry.get("sent") or 0)
        own[entry["dst"]] = own.get(entry["dst"], 0) + (entry.get("delivered") or 0)
    for entry in flows:
        paths = [path for _, path in entry.get("paths") or []] + [entry.get("path_at_end")]
        routers = {n for path in paths for n in (path or [])[1:-1]}
        entry["router_measurements"] = sum(int(measured.get(n, 0)) - own.get(n, 0)
                                           for n in routers)


def note_unmodelled_faults(sections: dict, fault_log: Sequence[Mapping]) -> None:
    """Name, in each ``hybrid`` entry's ``model_note``, the faults of the run that touched a
    link or node of its paths and that its model leaves out: the model knows the scenario's
    scheduled cuts and restores only (``cut_windows``), not ``qnet fault`` requests, degrades,
    corruptions or crashes (``fault_log``: the run's, as for result.json ``faults``)."""
    for entry in sections.get("hybrid", []):
        paths = [path for _, path in entry.get("paths") or []]
        links = {"-".join(hop) for path in paths for hop in zip(path, path[1:])}
        links |= {"-".join(reversed(hop)) for path in paths for hop in zip(path, path[1:])}
        nodes = {n for path in paths for n in path}
        left_out = [f"{f['action']} {f['target']} at {f['at_s']:.3f} s ({f['source']})"
                    for f in fault_log if f.get("target") in links | nodes
                    and (f.get("source") != "scenario"
                         or f.get("action") not in ("cut", "restore"))]
        if left_out and entry.get("fidelity_model") is not None:
            entry["model_note"] = "not in the model: " + "; ".join(left_out)
