"""The ``teleport`` app: send states from ``a`` to ``b`` over a direct entanglement link.

Per state: ``a`` waits for a heralded pair, prepares the input (random on the Bloch sphere or
a named state) in a free slot, Bell-measures it with its half and sends the outcome to ``b``;
``b`` applies ``X**m2 Z**m1`` to its half and acknowledges. For verification only, the message
also carries the input's angles, and ``b`` measures along the input's Bloch axis: outcome 0
with probability equal to the teleportation fidelity, so its mean estimates F (no oracle).
"""

from __future__ import annotations

import math
import statistics
import time

import msgspec
import numpy as np
import trio

from emulator.scenario import TeleportApp
from nodes.entanglement import estimate
from nodes.entanglement.pairs.shell import t2_of
from nodes.entanglement.qubits import QuantumOps
from nodes.sdk import NodeContext

# Bloch angles (theta, phi) of the named states
NAMED = {"0": (0.0, 0.0), "1": (math.pi, 0.0), "+": (math.pi / 2, 0.0),
         "-": (math.pi / 2, math.pi), "r": (math.pi / 2, math.pi / 2),
         "l": (math.pi / 2, -math.pi / 2)}


class Teleported(msgspec.Struct, tag="teleported", array_like=True):
    """a -> b: the BSM outcome for pair ``pair``; ``theta, phi`` for verification only;
    ``decay`` = a's half's storage time / T2."""

    pair: int
    m1: int
    m2: int
    theta: float
    phi: float
    decay: float


class Ack(msgspec.Struct, tag="ack", array_like=True):
    pair: int


class End(msgspec.Struct, tag="end", array_like=True):
    sent: int


Message = Teleported | Ack | End
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def link_name(node: NodeContext, app: TeleportApp) -> str:
    link = node.scenario.link_between(app.a, app.b)
    assert link is not None
    return link.id


def random_state(rng: np.random.Generator) -> tuple[float, float]:
    """Uniform (Haar) point on the Bloch sphere: ``cos theta`` uniform in [-1, 1]."""
    return math.acos(1 - 2 * float(rng.random())), 2 * math.pi * float(rng.random())


async def run(node: NodeContext, app: TeleportApp) -> list[dict]:
    if node.name == app.a:
        return [await run_sender(node, app)]
    return [await run_receiver(node, app)]


async def run_sender(node: NodeContext, app: TeleportApp) -> dict:
    ops = QuantumOps(node.daemon, node.name)
    link = link_name(node, app)
    channel = await node.transport.connect(app.b, f"teleport/{link}")
    rng = node.rng(f"teleport/{link}")
    t2 = t2_of(node.scenario, node.name)
    slots = node.scenario.nodes[[n.name for n in node.scenario.nodes].index(node.name)]
    spare = (slots.memory.slots if slots.memory else 16) - 1
    await node.clock.sleep_until(node.t_start)
    await ops.start_link(link, max_pending=max(1, spare))
    round_trips: list[float] = []
    sent = 0
    with trio.move_on_after(max(0.0, node.clock.wall_at(node.t_end) - time.time())):
        while sent < app.count:
            (pair,) = (await ops.pairs(link, max=1, timeout_s=5.0)).pairs or [None]
            if pair is None:
                continue
            t0 = time.perf_counter()
            theta, phi = NAMED[app.state] if app.state != "random" else random_state(rng)
            prepared = await ops.prepare(theta, phi)
            bsm = await ops.bell_measure(prepared.qubit, ops.ref(pair.slot))
            decay = (bsm.t - pair.t_stored) / t2 if t2 else 0.0
            await channel.send(_encoder.encode(
                Teleported(pair.pair, bsm.m1, bsm.m2, theta, phi, decay)))
            reply = _decoder.decode(await channel.receive())
            assert isinstance(reply, Ack) and reply.pair == pair.pair
            round_trips.append(time.perf_counter() - t0)
            sent += 1
    with trio.CancelScope(shield=True):
        await ops.stop_link(link)
        await channel.send(_encoder.encode(End(sent)))
    return {"section": "teleport", "role": "sender", "name": f"{app.a}-{app.b}",
            "sent": sent,
            "round_trip_ms_median": statistics.median(round_trips) * 1e3 if round_trips else None,
            "round_trip_ms_p90": float(np.percentile(round_trips, 90)) * 1e3
            if round_trips else None}


async def run_receiver(node: NodeContext, app: TeleportApp) -> dict:
    ops = QuantumOps(node.daemon, node.name)
    link = link_name(node, app)
    channel = await node.transport.accept(app.a, f"teleport/{link}")
    t2 = t2_of(node.scenario, node.name)
    held: dict[int, tuple[int, float]] = {}  # pair id -> slot, t_stored
    arrived = trio.Condition()
    hits: list[int] = []
    model: list[float] = []
    f_link = node.scenario.link_between(app.a, app.b).entanglement.source_fidelity

    async def feed() -> None:
        while True:
            reply = await ops.pairs(link, timeout_s=0.5)
            async with arrived:
                for x in reply.pairs:
                    held[x.pair] = (x.slot, x.t_stored)
                arrived.notify_all()

    # the sender starts the link with its own cap on pending halves (it needs a free slot for
    # the input state); starting it here too could fill its memory before that cap applies
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed)
        while True:
            message = _decoder.decode(await channel.receive())
            if isinstance(message, End):
                break
            async with arrived:
                while message.pair not in held:
                    await arrived.wait()
            slot, t_stored = held.pop(message.pair)
            q = ops.ref(slot)
            if message.m1:
                await ops.gate("Z", q)
            if message.m2:
                await ops.gate("X", q)
            await channel.send(_encoder.encode(Ack(message.pair)))
            # verification: measure along the input's Bloch axis
            await ops.gate("RZ", q, angle=-message.phi)
            await ops.gate("RY", q, angle=-message.theta)
            bits, t = await ops.measure_array([q], "Z")
            hits.append(int(bits[0] == 0))
            decay = message.decay + ((t - t_stored) / t2 if t2 else 0.0)
            model.append((2 * estimate.dephased_werner(f_link, decay) + 1) / 3)
        nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        await ops.stop_link(link)
    n = len(hits)
    f = sum(hits) / n if n else math.nan
    return {"section": "teleport", "role": "report", "name": f"{app.a}-{app.b}",
            "a": app.a, "b": app.b, "count": n, "state": app.state,
            "fidelity_mean": f,
            "fidelity_std": math.sqrt(f * (1 - f) / n) if n else None,
            # (2F+1)/3 of the dephased Werner pair: the Haar average, so for random inputs only
            "fidelity_model": float(np.mean(model)) if model and app.state == "random" else None}
