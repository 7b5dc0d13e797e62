"""The ``entanglement.pairs`` app: end-to-end pairs over a repeater path, measured to estimate F.

Each hop of the path has a classical channel (left node dials right) that carries
``swapping`` messages; repeaters forward what comes from one side to the other. Repeaters
swap as soon as they hold a pair on each side; the ends join the records into end-to-end
pairs, measure each in a Pauli basis both derive from the pair ids (X, Y, Z uniformly), and
``a`` ships its outcomes to ``b``, which estimates ``F = (1 + <XX> - <YY> + <ZZ>)/4`` and
reports per-pair storage times per node; the orchestrator predicts the model fidelity from
them (``model.py``). End-of-run logic lives in the cores of ``ends.py``; every channel is
written through ``post`` + ``run_writer``, so a cancelled task never leaves a half-sent frame.
"""

from __future__ import annotations

import hashlib
import logging
import math

import trio

from emulator.batches import batches
from nodes import remote_errors
from nodes.daemon_client import DaemonError
from nodes.entanglement import estimate
from nodes.entanglement.pairs.ends import ReportCore, SenderCore
from nodes.entanglement.pairs.spec import PairsApp
from nodes.entanglement.purification import PurifyParity
from nodes.entanglement.purify_ends import PurifierA, PurifierB
from nodes.entanglement.qubits import QuantumOps
from nodes.entanglement.swapping import (
    EndTracker,
    Finished,
    FinishedAck,
    Held,
    Outcomes,
    PurifyRound,
    RepeaterCore,
    SwapRecord,
    decode,
    encoder,
)
from nodes.errors import RemoteProtocolError, UnexpectedMessage
from nodes.sdk import NodeContext

MEASURE_BATCH = 4096
REPEATER_QUEUE = 3  # unswapped halves a repeater lets each of its links hold


def app_name(app: PairsApp) -> str:
    return app.name or f"{app.a}-{app.b}"


def full_path(app: PairsApp) -> list[str]:
    return [app.a, *app.path, app.b]


def link_between(view, u: str, v: str) -> str:
    """The id of the link between ``u`` and ``v`` (from the node's view of the scenario)."""
    link = view.link_between(u, v)
    assert link is not None
    return link.id


def channel_name(app: PairsApp) -> str:
    return f"entanglement.pairs/{app_name(app)}"


def basis_for(name: str, a_pair: int, b_pair: int) -> str:
    """The Pauli basis both ends use for the end-to-end pair (a public function of its ids)."""
    digest = hashlib.blake2b(f"{name}/{a_pair}/{b_pair}".encode(), digest_size=8).digest()
    return estimate.BASES[int.from_bytes(digest, "little") % 3]


async def run(node: NodeContext, app: PairsApp) -> list[dict]:
    """The role is the node's place on the path: end ``a``, end ``b`` or a repeater."""
    if node.name == app.a:
        return [await run_end_a(node, app)]
    if node.name == app.b:
        return [await run_end_b(node, app)]
    return await run_repeater(node, app)


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


async def _stop_link(ops: QuantumOps, link: str) -> None:
    """Stop ``link`` even while cancelled (it may already be stopped after a peer error)."""
    with trio.CancelScope(shield=True):
        try:
            await ops.stop_link(link)
        except DaemonError as exc:
            logging.getLogger("qnet.node").info("stop %s: %s", link, exc)


async def run_repeater(node: NodeContext, app: PairsApp) -> list[dict]:
    """Swap as soon as a pair of each side is held; forward everything else along the path.

    Swap records go both ways; ``Finished`` (from ``a``) stops the swapping: it is forwarded
    right only after the last swap's record, and ``FinishedAck`` is the last message left."""
    ops = QuantumOps(node.daemon, node.name)
    path, i, left, right = await _neighbours(node, app)
    assert left is not None and right is not None
    links = (link_between(node.view, path[i - 1], node.name),
             link_between(node.view, node.name, path[i + 1]))
    core = RepeaterCore()

    async def swap_ready() -> None:
        while (pair := core.next_swap()) is not None:
            held_l, held_r = pair
            try:  # shielded: a swap in flight completes and its record goes out
                with trio.CancelScope(shield=True):
                    bsm = await ops.bell_measure(ops.ref(held_l.slot), ops.ref(held_r.slot))
            except DaemonError as exc:  # a half lost to the cutoff: the pair is gone
                node_log(node, f"swap failed: {exc}")
                continue
            payload = encoder.encode(core.record(node.name, held_l, held_r, bsm.m1, bsm.m2,
                                                 bsm.t))
            left.post(payload)
            right.post(payload)

    def side_sink(side: str):
        async def sink(held: Held) -> None:
            core.add(side, held)
            await swap_ready()
        return sink

    async def rightwards_until_finished() -> bytes:
        while True:
            payload = await left.receive()
            if isinstance(message := decode(payload), Finished):
                return payload
            if isinstance(message, FinishedAck):
                raise UnexpectedMessage("finished_ack from the left")
            right.post(payload)

    async def leftwards() -> None:
        """Forward right -> left until ``FinishedAck`` has passed, then flush the left side."""
        while True:
            payload = await right.receive()
            left.post(payload)
            if isinstance(decode(payload), FinishedAck):
                await left.drain()
                return

    await node.clock.sleep_until(node.t_start)
    for link in links:  # short queues here: a half waiting for its partner only decoheres
        await ops.start_link(link, max_pending=REPEATER_QUEUE)
    errors: list[RemoteProtocolError] = []
    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(left.run_writer)
            outer.start_soon(right.run_writer)
            outer.start_soon(leftwards)
            async with trio.open_nursery() as feeding:
                feeding.start_soon(_feed, ops, links[0], side_sink("left"))
                feeding.start_soon(_feed, ops, links[1], side_sink("right"))
                finished = await rightwards_until_finished()
                feeding.cancel_scope.cancel()
            right.post(finished)
            await right.drain()
    except* RemoteProtocolError as group:
        errors = await remote_errors.report_group(node, app_name(app), group)
    await _stop_link(ops, links[1])
    stats = await ops.stats()
    return [{"section": "repeater", "name": app_name(app), "node": node.name,
             "swaps": core.swaps, "measurements": stats.measurements.get(node.name, 0),
             "remote_errors": len(errors)}]


def node_log(node: NodeContext, text: str) -> None:
    logging.getLogger(f"qnet.node.{node.name}").warning(text)


async def _measure_loop(ops: QuantumOps, name: str, side: str, receive, on_measured) -> None:
    """Measure end-to-end pairs in their bases in batches; ``on_measured(batch, bits, t)``."""
    async for batch in batches(receive, MEASURE_BATCH):
        bases = [basis_for(name, *((e.mine.pair, e.far_pair) if side == "a"
                                   else (e.far_pair, e.mine.pair))) for e in batch]
        bits, t = await ops.measure_array([ops.ref(e.mine.slot) for e in batch], bases)
        await on_measured(batch, bases, bits, t)


async def run_end_a(node: NodeContext, app: PairsApp) -> dict:
    """Measure ``count`` end-to-end pairs (or until ``t_end``), send the outcomes, then
    ``Finished``; wait (bounded) for ``FinishedAck`` so nothing is left in flight."""
    ops = QuantumOps(node.daemon, node.name)
    name = app_name(app)
    path, _, _, right = await _neighbours(node, app)
    link = link_between(node.view, path[0], path[1])
    tracker = EndTracker("a", len(path) - 2)
    core = SenderCore(app.count)
    send_ready, receive_ready = trio.open_memory_channel(math.inf)
    done, acked = trio.Event(), trio.Event()
    errors: list[RemoteProtocolError] = []

    async def sink(held: Held) -> None:
        for e in tracker.own(held):
            send_ready.send_nowait(e)

    async def post_right(payload: bytes) -> None:
        right.post(payload)

    purifier = None
    measure_from = receive_ready
    if app.purification != "none":
        purifier = PurifierA(ops, app.purification, app.purification_rounds, post_right,
                             node.rng(f"purify/{name}"))
        send_final, measure_from = trio.open_memory_channel(math.inf)

    async def records() -> None:
        while True:
            message = decode(await right.receive())
            if isinstance(message, SwapRecord):
                for e in tracker.record(message):
                    send_ready.send_nowait(e)
            elif isinstance(message, PurifyParity) and purifier is not None:
                purifier.peer_parity(message)
            elif isinstance(message, FinishedAck):
                acked.set()
                return
            else:
                raise UnexpectedMessage(f"{type(message).__name__} at end a")

    def entry() -> dict:
        result = {"section": "entanglement", "role": "a_end", "name": name,
                  "measured_a": core.measured, "p_success_first_link": started.p_success,
                  "t_first": t_first, "remote_errors_a": len(errors)}
        if purifier is not None:
            result["purification_attempted"] = purifier.attempted
            result["purification_kept"] = purifier.kept
        return result

    async def on_measured(batch, bases, bits, t) -> None:
        if (message := core.on_measured(batch, bases, bits, t)) is not None:
            right.post(encoder.encode(message))
            node.partial(entry())
        if core.done:
            done.set()

    await node.clock.sleep_until(node.t_start)
    started = await ops.start_link(link)
    t_first = node.clock.now()
    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(right.run_writer)
            outer.start_soon(records)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_feed, ops, link, sink)
                if purifier is not None:
                    nursery.start_soon(purifier.run, receive_ready, send_final)
                nursery.start_soon(_measure_loop, ops, name, "a", measure_from, on_measured)
                with trio.move_on_at(node.clock.deadline(node.t_end)):
                    await done.wait()
                nursery.cancel_scope.cancel()
            await _stop_link(ops, link)
            right.post(encoder.encode(core.finished()))
            await right.drain()
            with trio.move_on_after(10.0):
                await acked.wait()
            outer.cancel_scope.cancel()
    except* RemoteProtocolError as group:
        errors += await remote_errors.report_group(node, name, group)
        await _stop_link(ops, link)
    return entry()


async def run_end_b(node: NodeContext, app: PairsApp) -> dict:
    """Measure our halves, join them with a's outcomes (``ReportCore``) and report once
    ``Finished`` has come and every announced outcome is joined (or 2 s later)."""
    ops = QuantumOps(node.daemon, node.name)
    name = app_name(app)
    path, _, left, _ = await _neighbours(node, app)
    link = link_between(node.view, path[-2], path[-1])
    tracker = EndTracker("b", len(path) - 2)
    core = ReportCore(name, path, node.rng(f"pairs/{name}/storage-sample"))
    errors: list[RemoteProtocolError] = []
    settled = trio.Event()
    send_ready, receive_ready = trio.open_memory_channel(math.inf)

    def check_settled() -> None:
        if core.settled:
            settled.set()

    async def sink(held: Held) -> None:
        for e in tracker.own(held):
            send_ready.send_nowait(e)

    def entry() -> dict:
        result = core.entry()
        f = result["fidelity_mean"]
        result.update({
            "a": app.a, "b": app.b, "chsh": None, "remote_errors": len(errors),
            "purification": app.purification, "purification_rounds": app.purification_rounds,
            "target_fidelity": app.target_fidelity,
            "target_met": bool(f >= app.target_fidelity) if not math.isnan(f) else False})
        return result

    async def on_measured(batch, bases, bits, t) -> None:
        core.on_measured(batch, bases, bits, t)
        check_settled()
        if core.partial_due():
            node.partial(entry())

    async def post_left(payload: bytes) -> None:
        left.post(payload)

    purifier = PurifierB(ops, post_left) if app.purification != "none" else None

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
            message = decode(await left.receive())
            if isinstance(message, SwapRecord):
                for e in tracker.record(message):
                    send_ready.send_nowait(e)
            elif isinstance(message, Outcomes):
                core.on_outcomes(message)
                if purifier is not None:
                    nursery.start_soon(measure_final, message)
            elif isinstance(message, PurifyRound) and purifier is not None:
                nursery.start_soon(purifier.round, message)
            elif isinstance(message, PurifyParity) and purifier is not None:
                purifier.peer_parity(message)
            elif isinstance(message, Finished):
                core.on_finished(message)
                return
            else:
                raise UnexpectedMessage(f"{type(message).__name__} at end b")
            check_settled()

    await node.clock.sleep_until(node.t_start)
    await ops.start_link(link)
    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(left.run_writer)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_feed, ops, link, sink)
                if purifier is None:
                    nursery.start_soon(_measure_loop, ops, name, "b", receive_ready, on_measured)
                else:
                    nursery.start_soon(add_for_purification)
                await messages(nursery)
                check_settled()
                with trio.move_on_after(2.0):  # our own measurements of the last pairs may lag
                    await settled.wait()
                nursery.cancel_scope.cancel()
            left.post(encoder.encode(FinishedAck()))  # our last message on this channel
            await left.drain()
    except* RemoteProtocolError as group:
        errors += await remote_errors.report_group(node, name, group)
    await _stop_link(ops, link)
    return entry()
