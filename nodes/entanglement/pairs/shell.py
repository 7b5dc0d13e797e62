"""The ``entanglement.pairs`` app: end-to-end pairs over a repeater path, measured to estimate F.

Each hop of the path has a classical channel (left node dials right) that carries
``swapping`` messages; repeaters forward what comes from one side to the other. Repeaters
swap as soon as they hold a pair on each side; the ends join the records into end-to-end
pairs, measure each in a Pauli basis both derive from the pair ids (X, Y, Z uniformly), and
``a`` ships its outcomes to ``b``, which estimates ``F = (1 + <XX> - <YY> + <ZZ>)/4`` and
compares it with the Werner-chain + dephasing model from the reported storage times.
"""

from __future__ import annotations

import hashlib
import logging
import math
import statistics
import time
from itertools import pairwise

import numpy as np
import trio

from emulator.physics import states as st
from emulator.scenario import PairsApp, RepeaterApp, Scenario, memory_of
from nodes.daemon_client import DaemonError
from nodes.entanglement import estimate
from nodes.entanglement.purification import PurifyParity
from nodes.entanglement.purification import rounds as purification_rounds
from nodes.entanglement.purify_ends import PurifierA, PurifierB
from nodes.entanglement.qubits import QuantumOps
from nodes.entanglement.swapping import (
    EndToEnd,
    EndTracker,
    Finished,
    FinishedAck,
    Held,
    Outcomes,
    PurifyRound,
    RepeaterCore,
    SwapRecord,
    decoder,
    encoder,
)
from nodes.sdk import NodeContext

MEASURE_BATCH = 4096
REPEATER_QUEUE = 3  # unswapped halves a repeater lets each of its links hold


def app_name(app: PairsApp) -> str:
    return app.name or f"{app.a}-{app.b}"


def full_path(app: PairsApp) -> list[str]:
    return [app.a, *app.path, app.b]


def link_between(sc: Scenario, u: str, v: str) -> str:
    link = sc.link_between(u, v)
    assert link is not None
    return link.id


def channel_name(app: PairsApp) -> str:
    return f"entanglement.pairs/{app_name(app)}"


def basis_for(name: str, a_pair: int, b_pair: int) -> str:
    """The Pauli basis both ends use for the end-to-end pair (a public function of its ids)."""
    digest = hashlib.blake2b(f"{name}/{a_pair}/{b_pair}".encode(), digest_size=8).digest()
    return estimate.BASES[int.from_bytes(digest, "little") % 3]


def t2_of(sc: Scenario, node: str) -> float | None:
    return memory_of(sc, node).t2_s


async def run(node: NodeContext, app: PairsApp | RepeaterApp) -> list[dict]:
    if isinstance(app, RepeaterApp):
        pairs_app = node.scenario.apps[app.app]
        return await run_repeater(node, pairs_app)
    if node.name == app.a:
        return [await run_end_a(node, app)]
    return [await run_end_b(node, app)]


async def _neighbours(node: NodeContext, app: PairsApp):
    """Open the channels to the left and right neighbours on the path (None at the ends)."""
    path = full_path(app)
    i = path.index(node.name)
    left = right = None
    async with trio.open_nursery() as nursery:
        async def dial() -> None:
            nonlocal right
            right = await node.transport.connect(path[i + 1], channel_name(app))

        async def wait() -> None:
            nonlocal left
            left = await node.transport.accept(path[i - 1], channel_name(app))

        if i + 1 < len(path):
            nursery.start_soon(dial)
        if i > 0:
            nursery.start_soon(wait)
    return path, i, left, right


async def _feed(ops: QuantumOps, link: str, sink) -> None:
    """Forward heralded halves of ``link`` to ``sink(Held)`` until cancelled."""
    while True:
        reply = await ops.pairs(link, timeout_s=0.5)
        for x in reply.pairs:
            await sink(Held(x.pair, x.slot, x.t_stored))


async def run_repeater(node: NodeContext, app: PairsApp) -> list[dict]:
    ops = QuantumOps(node.daemon, node.name)
    path, i, left, right = await _neighbours(node, app)
    assert left is not None and right is not None
    links = (link_between(node.scenario, path[i - 1], node.name),
             link_between(node.scenario, node.name, path[i + 1]))
    t2 = t2_of(node.scenario, node.name)
    core = RepeaterCore()
    swaps = 0
    stopping = False
    lock = trio.Lock()  # one swap at a time (keeps order); held while a record is sent

    async def try_swap() -> None:
        nonlocal swaps
        async with lock:
            while not stopping and (pair := core.next_swap()) is not None:
                held_l, held_r = pair
                try:
                    bsm = await ops.bell_measure(ops.ref(held_l.slot), ops.ref(held_r.slot))
                except DaemonError as exc:  # a half lost to the cutoff: the pair is gone
                    node_log(node, f"swap failed: {exc}")
                    continue
                swaps += 1
                payload = encoder.encode(RepeaterCore.record(
                    node.name, held_l, held_r, bsm.m1, bsm.m2, bsm.t, t2))
                await left.send(payload)
                await right.send(payload)

    def side_sink(side: str):
        async def sink(held: Held) -> None:
            core.add(side, held)
            await try_swap()
        return sink

    async def rightwards(feeding: trio.CancelScope) -> None:
        """Forward left -> right; on ``Finished`` stop swapping (after the current swap)."""
        nonlocal stopping
        while True:
            payload = await left.receive()
            if isinstance(decoder.decode(payload), Finished):
                stopping = True
                async with lock:
                    await right.send(payload)
                    feeding.cancel()
                return
            await right.send(payload)

    async def leftwards() -> None:
        """Forward right -> left until ``FinishedAck`` has passed."""
        while True:
            payload = await right.receive()
            await left.send(payload)
            if isinstance(decoder.decode(payload), FinishedAck):
                return

    await node.clock.sleep_until(node.t_start)
    for link in links:  # short queues here: a half waiting for its partner only decoheres
        await ops.start_link(link, max_pending=REPEATER_QUEUE)
    async with trio.open_nursery() as outer:
        outer.start_soon(leftwards)
        async with trio.open_nursery() as feeding:
            feeding.start_soon(_feed, ops, links[0], side_sink("left"))
            feeding.start_soon(_feed, ops, links[1], side_sink("right"))
            feeding.start_soon(rightwards, feeding.cancel_scope)
    with trio.CancelScope(shield=True):
        await ops.stop_link(links[1])
    stats = await ops.stats()
    return [{"section": "repeater", "name": app_name(app), "node": node.name, "swaps": swaps,
             "measurements": stats.measurements.get(node.name, 0)}]


def node_log(node: NodeContext, text: str) -> None:
    logging.getLogger(f"qnet.node.{node.name}").warning(text)


async def _measure_loop(ops: QuantumOps, name: str, side: str, receive, on_measured) -> None:
    """Measure end-to-end pairs in their bases in batches; ``on_measured(batch, bits, t)``."""
    async for first in receive:
        batch: list[EndToEnd] = [first]
        while len(batch) < MEASURE_BATCH:
            try:
                batch.append(receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        bases = [basis_for(name, *((e.mine.pair, e.far_pair) if side == "a"
                                   else (e.far_pair, e.mine.pair))) for e in batch]
        bits, t = await ops.measure_array([ops.ref(e.mine.slot) for e in batch], bases)
        await on_measured(batch, bases, bits, t)


async def run_end_a(node: NodeContext, app: PairsApp) -> dict:
    ops = QuantumOps(node.daemon, node.name)
    name = app_name(app)
    path, _, _, right = await _neighbours(node, app)
    link = link_between(node.scenario, path[0], path[1])
    t2 = t2_of(node.scenario, node.name)
    tracker = EndTracker("a", len(path) - 2)
    send_ready, receive_ready = trio.open_memory_channel(math.inf)
    measured = 0
    done = trio.Event()
    finishing = False
    acked = trio.Event()
    sending = trio.Lock()  # never cancel a half-sent frame

    async def sink(held: Held) -> None:
        for e in tracker.own(held):
            send_ready.send_nowait(e)

    async def records() -> None:
        while True:
            message = decoder.decode(await right.receive())
            if isinstance(message, SwapRecord) and not finishing:
                for e in tracker.record(message):
                    send_ready.send_nowait(e)
            elif isinstance(message, PurifyParity) and purifier is not None:
                purifier.peer_parity(message)
            elif isinstance(message, FinishedAck):
                acked.set()
                return

    async def send_right(payload: bytes) -> None:
        async with sending:
            if not finishing:
                await right.send(payload)

    purifier = None
    measure_from = receive_ready
    if app.purification != "none":
        purifier = PurifierA(ops, app.purification, app.purification_rounds, send_right,
                             node.rng(f"purify/{name}"))
        send_final, measure_from = trio.open_memory_channel(math.inf)

    async def on_measured(batch, bases, bits, t) -> None:
        nonlocal measured
        keep = min(len(batch), app.count - measured)
        if keep <= 0:
            return
        decay = [(t - e.mine.t_stored) / t2 if t2 else 0.0 for e in batch[:keep]]
        async with sending:
            if finishing:
                return
            await right.send(encoder.encode(Outcomes(
                [e.mine.pair for e in batch[:keep]], "".join(bases[:keep]),
                bits[:keep].tobytes(), decay)))
        measured += keep
        if measured >= app.count:
            done.set()

    await node.clock.sleep_until(node.t_start)
    started = await ops.start_link(link)
    t_first = node.clock.now()
    async with trio.open_nursery() as outer:
        outer.start_soon(records)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_feed, ops, link, sink)
            if purifier is not None:
                nursery.start_soon(purifier.run, receive_ready, send_final)
            nursery.start_soon(_measure_loop, ops, name, "a", measure_from, on_measured)
            with trio.move_on_after(max(0.0, node.clock.wall_at(node.t_end) - time.time())):
                await done.wait()
            async with sending:
                finishing = True
                await ops.stop_link(link)
                await right.send(encoder.encode(Finished(measured)))
                nursery.cancel_scope.cancel()
        with trio.move_on_after(10.0):
            await acked.wait()
        outer.cancel_scope.cancel()
    entry = {"section": "entanglement", "role": "a_end", "name": name, "measured_a": measured,
             "p_success_first_link": started.p_success, "t_first": t_first}
    if purifier is not None:
        entry["purification_attempted"] = purifier.attempted
        entry["purification_kept"] = purifier.kept
    return entry


async def run_end_b(node: NodeContext, app: PairsApp) -> dict:
    ops = QuantumOps(node.daemon, node.name)
    name = app_name(app)
    path, _, left, _ = await _neighbours(node, app)
    link = link_between(node.scenario, path[-2], path[-1])
    t2 = t2_of(node.scenario, node.name)
    tracker = EndTracker("b", len(path) - 2)
    send_ready, receive_ready = trio.open_memory_channel(math.inf)
    mine: dict[int, tuple[str, int, float, float]] = {}  # a's pair id -> basis, bit, decay, t
    joined: list[tuple[str, int, int, float]] = []  # basis, bit_a, bit_b, total decay
    latencies: list[float] = []
    times: list[float] = []

    async def sink(held: Held) -> None:
        for e in tracker.own(held):
            send_ready.send_nowait(e)

    async def on_measured(batch, bases, bits, t) -> None:
        for e, basis, bit in zip(batch, bases, bits, strict=True):
            flipped = int(bit) ^ estimate.flips(e.frame, basis)
            decay = e.decay + ((t - e.mine.t_stored) / t2 if t2 else 0.0)
            mine[e.far_pair] = (basis, flipped, decay, t)
            if e.t_last_swap > float("-inf"):
                latencies.append(t - e.t_last_swap)
            times.append(t)
        _join()

    pending_a: dict[int, tuple[str, int, float]] = {}

    def _join() -> None:
        for pair in [k for k in pending_a if k in mine]:
            basis_a, bit_a, decay_a = pending_a.pop(pair)
            basis_b, bit_b, decay_b, _ = mine.pop(pair)
            assert basis_a == basis_b
            joined.append((basis_a, bit_a, bit_b, decay_a + decay_b))

    sending = trio.Lock()  # never cancel a half-sent frame
    closing = False

    async def send_left(payload: bytes) -> None:
        async with sending:
            if not closing:
                await left.send(payload)

    purifier = PurifierB(ops, send_left) if app.purification != "none" else None

    async def add_for_purification() -> None:
        async for e in receive_ready:
            await purifier.add(e)

    async def measure_final(message: Outcomes) -> None:
        """Purification mode: measure our halves of a's final pairs when a reports them."""
        pairs = await purifier.take(list(message.pairs))
        bases = list(message.bases)
        bits, t = await ops.measure_array([ops.ref(e.mine.slot) for e in pairs], bases)
        await on_measured(pairs, bases, bits, t)

    async def messages(nursery: trio.Nursery) -> None:
        while True:
            message = decoder.decode(await left.receive())
            if isinstance(message, SwapRecord):
                for e in tracker.record(message):
                    send_ready.send_nowait(e)
            elif isinstance(message, Outcomes):
                for pair, basis, bit, decay in zip(message.pairs, message.bases,
                                                   message.outcomes, message.decay,
                                                   strict=True):
                    pending_a[pair] = (basis, bit, decay)
                if purifier is not None:
                    nursery.start_soon(measure_final, message)
                _join()
            elif isinstance(message, PurifyRound) and purifier is not None:
                nursery.start_soon(purifier.round, message)
            elif isinstance(message, PurifyParity) and purifier is not None:
                purifier.peer_parity(message)
            elif isinstance(message, Finished):
                return

    await node.clock.sleep_until(node.t_start)
    await ops.start_link(link)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_feed, ops, link, sink)
        if purifier is None:
            nursery.start_soon(_measure_loop, ops, name, "b", receive_ready, on_measured)
        else:
            nursery.start_soon(add_for_purification)
        await messages(nursery)
        with trio.move_on_after(2.0):  # our own measurements of the last pairs may lag
            while pending_a:
                await trio.sleep(0.005)
        async with sending:
            closing = True
            nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        await left.send(encoder.encode(FinishedAck()))  # our last message on this channel
        await ops.stop_link(link)
    return report(node.scenario, app, joined, latencies, times)


def report(sc: Scenario, app: PairsApp, joined, latencies, times) -> dict:
    """The ``entanglement`` result entry from the joined outcomes (reported by end ``b``)."""
    samples = {}
    for basis in estimate.BASES:
        rows = [(a, b) for bs, a, b, _ in joined if bs == basis]
        arr = np.array(rows, dtype=np.uint8).reshape(-1, 2)
        samples[basis] = (arr[:, 0], arr[:, 1])
    f, se = estimate.fidelity_from_correlations(samples)
    path = full_path(app)
    f_chain = estimate.werner_chain(
        sc.link_between(u, v).entanglement.source_fidelity for u, v in pairwise(path))
    if app.purification == "none":
        model = [estimate.dephased_werner(f_chain, d) for *_, d in joined]
    else:  # recurrence bookkeeping on the Werner chain; memory decay not modelled here
        _, coeffs = purification_rounds(app.purification, st.werner_coefficients(f_chain),
                                        app.purification_rounds)
        model = [float(coeffs[0])] if joined else []
    span = (max(times) - min(times)) if len(times) > 1 else 0.0
    entry = {
        "section": "entanglement", "role": "report", "name": app_name(app),
        "a": app.a, "b": app.b, "path": path, "pairs": len(joined),
        "pairs_per_s": len(joined) / span if span > 0 else None,
        "fidelity_mean": f, "fidelity_std": se,  # std = standard error of the estimate
        "fidelity_model": float(np.mean(model)) if model else None,
        "fidelity_link_chain": f_chain,
        "chsh": None,
        "purification": app.purification, "purification_rounds": app.purification_rounds,
        "swap_latency_ms_median": statistics.median(latencies) * 1e3 if latencies else None,
        "target_fidelity": app.target_fidelity,
        "target_met": bool(f >= app.target_fidelity) if not math.isnan(f) else False,
        "samples_per_basis": {b: len(samples[b][0]) for b in estimate.BASES},
    }
    return entry
