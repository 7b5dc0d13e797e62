"""The ``hybrid.send`` app at its sender, its destination and the routers between.

Every node runs the node's one hybrid plane (``nodes.net.hybrid_shell``). The sender makes
each payload (a Bell pair, keeping one half and measuring it in a random basis, or one of
six axis states, prepared straight into the fibre: ``QubitPrepareSend``), sends it into the
fibre to the current next hop and its header on the link's classical channel right after;
the destination corrects the last fibre's drift from its readout (if it compensates) and
measures in a random basis. At the end the destination
opens a routed stream to the sender and both exchange their records (seq, basis, outcome)
and estimate the fidelity (``estimate``). Routers report their decision latencies, also per flow
(a router's latency depends on its place on the flow's path).
"""

from __future__ import annotations

import logging

import msgspec
import numpy as np
import trio

from emulator.daemon import protocol as p
from nodes.apps.hybrid import estimate
from nodes.apps.hybrid.spec import HybridSendApp
from nodes.daemon_client import DaemonError
from nodes.net.header import PAYLOAD_EPR_HALF, PAYLOAD_QUBIT
from nodes.net.hybrid_shell import HybridPlane, correction, make_header, plane_for
from nodes.sdk import NodeContext

log = logging.getLogger("qnet.hybrid.send")

CHUNK = 256  # records per stream message
MEASURE_BATCH = 16  # the sender measures its kept halves this many at a time


class Records(msgspec.Struct):
    """One stream message of the end-of-run exchange: int64 (seq, a, b) rows, row-major."""

    rows: bytes
    last: bool


async def run(node: NodeContext, app: HybridSendApp) -> list[dict]:
    plane = await plane_for(node)
    if node.name == app.src:
        return [await _sender(node, app, plane)]
    if node.name == app.dst:
        return [await _destination(node, app, plane)]
    await node.clock.sleep_until(node.t_end)
    return [{"section": "router", "node": node.name, "decision_us": list(plane.decision_us),
             "decision_us_by_flow": {str(flow): list(samples)
                                     for flow, samples in plane.decision_us_by_flow.items()},
             "counters": {k: int(v) for k, v in plane.counters.items()}}]


async def _sender(node: NodeContext, app: HybridSendApp, plane: HybridPlane) -> dict:
    clock, daemon, net = node.clock, node.daemon, node.net
    rng = node.rng(f"hybrid/{app.flow}")
    t_stop = node.t_end - app.stop_before_end_s
    out: dict = {"role": "src", "sent": 0, "no_route": 0, "send_errors": 0, "path": None}
    with trio.move_on_at(clock.deadline(t_stop)):  # the path at start_s: routing has converged
        await clock.sleep_until(node.t_start + app.start_s)
        out["path"] = list((await net.wait_route(app.dst)).path)
    records: list = []
    times: list[float] = []
    paths: list[tuple[int, tuple[str, ...]]] = []  # (first seq, its route's path) per change
    kept: list[tuple[int, p.QubitRef]] = []  # (seq, the sender's half), measured in batches
    t_next = max(clock.now(), node.t_start + app.start_s)
    seq = 0
    while (app.count == 0 or seq < app.count) and clock.now() < t_stop:
        await clock.sleep_until(t_next)
        t_next = max(t_next + 1.0 / app.rate_hz, clock.now())  # behind: slower, no burst
        route = net.route(app.dst)
        if route is None:
            out["no_route"] += 1
            continue
        link, codec = plane.codec_to(route.next_hop)
        keep = None
        try:
            if app.payload == "pair":
                keep, fly = await _prepare_pair(daemon)
                sent = await daemon.request(p.QubitSend, link=link, qubit=fly)
            else:  # a known state: prepared straight into the fibre, one request
                k = int(rng.integers(6))
                (theta, phi), _, _ = estimate.STATES[k]
                sent = await daemon.request(p.QubitPrepareSend, link=link, theta=theta, phi=phi)
        except DaemonError as exc:
            out["send_errors"] += 1
            log.warning("send %d: %s", seq, exc)
            if keep is not None:  # the kept half of a pair that never left
                await daemon.request(p.QubitDiscard, qubits=[keep])
            continue
        kind = PAYLOAD_EPR_HALF if app.payload == "pair" else PAYLOAD_QUBIT
        header = make_header(node, app.dst, app.flow, seq, app.ttl, kind, sent.payload)
        if not net.send_udp(route.next_hop, codec.encode(header)):
            plane.counters["hybrid_header_send_failed"] += 1
        times.append(sent.t)
        if not paths or route.path != paths[-1][1]:
            paths.append((seq, route.path))
        if app.payload == "pair":
            kept.append((seq, keep))
            if len(kept) >= MEASURE_BATCH:
                records.extend(await _measure_kept(daemon, rng, kept))
        else:
            records.append((seq, k, 0))
        seq += 1
    records.extend(await _measure_kept(daemon, rng, kept))
    out["sent"] = seq
    out["send_times"] = times
    out["paths"] = [[first, list(path)] for first, path in paths]
    out["t_start"] = node.t_start  # the apps' start: [[faults]] at_s count from it
    out["path_at_end"] = list(r.path) if (r := net.route(app.dst)) is not None else None
    theirs = await _exchange(node, app, records, opener=False)
    out.update(_estimate(app, records, theirs))
    return out


async def _prepare_pair(daemon) -> tuple[p.QubitRef, p.QubitRef]:
    """Phi+ in two fresh slots: |+>|0> (both prepared at once), then CNOT."""
    refs: dict[str, p.QubitRef] = {}

    async def prepare(role: str, theta: float) -> None:
        refs[role] = (await daemon.request(p.QubitPrepare, theta=theta)).qubit

    async with trio.open_nursery() as nursery:
        nursery.start_soon(prepare, "keep", float(np.pi / 2))
        nursery.start_soon(prepare, "fly", 0.0)
    await daemon.request(p.QubitGate, gate="CNOT", qubits=[refs["keep"], refs["fly"]])
    return refs["keep"], refs["fly"]


async def _measure_kept(daemon, rng: np.random.Generator,
                        kept: list[tuple[int, p.QubitRef]]) -> list[tuple[int, int, int]]:
    """Measure the kept halves, each in a random basis, in one request; empties ``kept``."""
    if not kept:
        return []
    bases = [int(b) for b in rng.integers(3, size=len(kept))]
    m = await daemon.request(p.QubitMeasure, qubits=[ref for _, ref in kept],
                             bases=[estimate.BASES[b] for b in bases])
    out = [(seq, b, m.outcomes[i]) for i, ((seq, _), b) in enumerate(zip(kept, bases))]
    kept.clear()
    return out


async def _destination(node: NodeContext, app: HybridSendApp, plane: HybridPlane) -> dict:
    clock, daemon = node.clock, node.daemon
    rng = node.rng(f"hybrid/{app.flow}")
    deliveries = plane.flow(app.flow)
    compensate = plane.core.compensate
    out = {"role": "dst", "delivered": 0, "lost_in_fibre": 0, "late": 0, "measure_errors": 0}
    records = []
    by_link: dict[str, int] = {}  # delivered per last fibre: which path they came over
    out["delivered_by_link"] = by_link
    t_collect = node.t_end - app.stop_before_end_s / 2
    with trio.move_on_at(clock.deadline(t_collect)):
        async for got in deliveries:
            if got.arrival is None:
                out["late" if got.late else "lost_in_fibre"] += 1
                continue
            ref = p.QubitRef(node.name, got.arrival.slot)
            basis = int(rng.integers(3))
            try:
                if compensate and (fix := correction(got.arrival.reference)) is not None:
                    await daemon.request(p.QubitGate, qubits=[ref], **fix)
                m = await daemon.request(p.QubitMeasure, qubits=[ref],
                                         bases=[estimate.BASES[basis]])
            except DaemonError as exc:
                out["measure_errors"] += 1
                log.warning("measure seq %d: %s", got.header.seq, exc)
                continue
            out["delivered"] += 1
            by_link[got.arrival.link] = by_link.get(got.arrival.link, 0) + 1
            records.append((got.header.seq, basis, m.outcomes[0]))
    theirs = await _exchange(node, app, records, opener=True)
    out.update(_estimate(app, theirs, records))
    out["decision_us"] = list(plane.decision_us_by_flow.get(app.flow, []))  # its stores
    out["counters"] = {k: int(v) for k, v in plane.counters.items() if k.startswith("dropped_")}
    return out


def _estimate(app: HybridSendApp, src: list | None, dst: list | None) -> dict:
    if src is None or dst is None:
        return {"fidelity_mean": None, "fidelity_stderr": None, "exchange": "failed"}
    return estimate.estimate(app.payload, np.array(src), np.array(dst))


async def _exchange(node: NodeContext, app: HybridSendApp, mine: list,
                    opener: bool) -> list | None:
    """Swap records over a routed stream (the destination opens it); None if it failed
    before the end of the run."""
    net = node.net
    with trio.move_on_at(node.clock.deadline(node.t_end)):
        if opener:
            stream = await net.open_stream(app.src, app.port)
            _send_records(stream, mine)
            return await _receive_records(stream)
        stream = await net.accept_stream(app.port)
        theirs = await _receive_records(stream)
        _send_records(stream, mine)
        await stream.wait_acked()
        return theirs
    return None


def _send_records(stream, rows: list) -> None:
    data = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    chunks = range(0, max(1, data.shape[0]), CHUNK)
    for start in chunks:
        last = start + CHUNK >= data.shape[0]
        stream.send(msgspec.msgpack.encode(Records(data[start:start + CHUNK].tobytes(), last)))


async def _receive_records(stream) -> list | None:
    """The peer's records; None (and a warning) for a message that is not ``Records``."""
    decoder = msgspec.msgpack.Decoder(Records)
    rows: list = []
    while True:
        try:
            message = decoder.decode(await stream.receive())
            rows.extend(np.frombuffer(message.rows, dtype=np.int64).reshape(-1, 3).tolist())
        except (msgspec.DecodeError, ValueError) as exc:
            log.warning("malformed records from %s: %s", stream.peer, exc)
            return None
        if message.last:
            return rows
