"""The ``teleport`` app: send states from ``a`` to ``b`` over a direct entanglement link.

Per state: ``a`` waits for a heralded pair, prepares the input (random on the Bloch sphere or
a named state) in a free slot, Bell-measures it with its half and sends the outcome to ``b``;
``b`` applies ``X**m2 Z**m1`` to its half and acknowledges. For verification only, the message
also carries the input's angles, and ``b`` measures along the input's Bloch axis: outcome 0
with probability equal to the teleportation fidelity, so its mean estimates F (no oracle).
The ends report what they measured (``ends.py``); the orchestrator predicts the model.
"""

from __future__ import annotations

import time

import trio

from nodes import remote_errors
from nodes.entanglement.qubits import QuantumOps
from nodes.entanglement.teleport.ends import Ack, ReceiverCore, SenderCore, decode, encoder
from nodes.entanglement.teleport.spec import TeleportApp
from nodes.errors import RemoteProtocolError
from nodes.sdk import NodeContext


def link_name(node: NodeContext, app: TeleportApp) -> str:
    link = node.view.link_between(app.a, app.b)
    assert link is not None
    return link.id


async def run(node: NodeContext, app: TeleportApp) -> list[dict]:
    if node.name == app.a:
        return [await run_sender(node, app)]
    return [await run_receiver(node, app)]


async def run_sender(node: NodeContext, app: TeleportApp) -> dict:
    """Teleport ``count`` states (or until ``t_end``), one at a time; then ``End``."""
    ops = QuantumOps(node.daemon, node.name)
    link = link_name(node, app)
    name = f"{app.a}-{app.b}"
    channel = await node.transport.connect(app.b, f"teleport/{link}")
    core = SenderCore(app.count, app.state, node.rng(f"teleport/{link}"))
    spare = node.view.memory.slots - 1  # one slot for the input state
    await node.clock.sleep_until(node.t_start)
    await ops.start_link(link, max_pending=max(1, spare))
    errors: list[RemoteProtocolError] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.run_writer)
            with trio.move_on_at(node.clock.deadline(node.t_end)):
                while not core.done:
                    (pair,) = (await ops.pairs(link, max=1, timeout_s=5.0)).pairs or [None]
                    if pair is None:
                        continue
                    t0 = time.perf_counter()
                    theta, phi = core.next_input()
                    prepared = await ops.prepare(theta, phi)
                    bsm = await ops.bell_measure(prepared.qubit, ops.ref(pair.slot))
                    channel.post(encoder.encode(core.teleported(
                        pair.pair, bsm.m1, bsm.m2, theta, phi, bsm.t - pair.t_stored)))
                    core.on_reply(decode(await channel.receive()), time.perf_counter() - t0)
                    node.partial(core.entry(name))
            channel.post(encoder.encode(core.end()))
            await channel.drain()
    except* RemoteProtocolError as group:
        errors = await remote_errors.report_group(node, name, group)
    with trio.CancelScope(shield=True):
        await ops.stop_link(link)
    return {**core.entry(name), "remote_errors_a": len(errors)}


async def run_receiver(node: NodeContext, app: TeleportApp) -> dict:
    """Correct, acknowledge and verify each state until ``End``."""
    ops = QuantumOps(node.daemon, node.name)
    link = link_name(node, app)
    name = f"{app.a}-{app.b}"
    channel = await node.transport.accept(app.a, f"teleport/{link}")
    core = ReceiverCore([app.a, app.b], node.rng(f"teleport/{link}/storage-sample"))
    held: dict[int, tuple[int, float]] = {}  # pair id -> slot, t_stored
    arrived = trio.Condition()

    async def feed() -> None:
        while True:
            reply = await ops.pairs(link, timeout_s=0.5)
            async with arrived:
                for x in reply.pairs:
                    held[x.pair] = (x.slot, x.t_stored)
                arrived.notify_all()

    async def serve() -> None:
        while (message := core.on_message(decode(await channel.receive()))) is not None:
            async with arrived:
                while message.pair not in held:
                    await arrived.wait()
            slot, t_stored = held.pop(message.pair)
            q = ops.ref(slot)
            if message.m1:
                await ops.gate("Z", q)
            if message.m2:
                await ops.gate("X", q)
            channel.post(encoder.encode(Ack(message.pair)))
            # verification: measure along the input's Bloch axis
            await ops.gate("RZ", q, angle=-message.phi)
            await ops.gate("RY", q, angle=-message.theta)
            bits, t = await ops.measure_array([q], "Z")
            core.verified(message, int(bits[0]), t - t_stored)
            node.partial({**core.entry(name), "a": app.a, "b": app.b, "state": app.state})

    # the sender starts the link with its own cap on pending halves (it needs a free slot for
    # the input state); starting it here too could fill its memory before that cap applies
    errors: list[RemoteProtocolError] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            nursery.start_soon(channel.run_writer)
            await serve()
            await channel.drain()
            nursery.cancel_scope.cancel()
    except* RemoteProtocolError as group:
        errors = await remote_errors.report_group(node, name, group)
    with trio.CancelScope(shield=True):
        await ops.stop_link(link)
    return {**core.entry(name), "a": app.a, "b": app.b, "state": app.state,
            "remote_errors": len(errors)}
