"""Purification wired between the two ends of ``entanglement.pairs`` (trio shells around
``purification.PurificationRound``).

End ``a`` pairs up end-to-end pairs of the same level, starts a round (``PurifyRound`` over the
chain), applies its local gates through the daemon, measures the target and exchanges the
parity; a kept source moves up one level, and after ``rounds`` levels it is final. End ``b``
applies the swap's Pauli correction physically first (purification needs ``Phi+``), then runs
the same round when asked. Failures of an operation (cutoff) count as a discarded round.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import trio

from emulator.physics import bell_diagonal as bd
from nodes.daemon_client import DaemonError
from nodes.entanglement.purification import Decision, GateOp, PurificationRound, PurifyParity
from nodes.entanglement.qubits import QuantumOps
from nodes.entanglement.swapping import EndToEnd, PurifyRound, encoder


async def apply_ops(ops: QuantumOps, gate_ops: list[GateOp], source: int, target: int) -> int:
    """Run a round's local operations on slots ``source``/``target``; returns the Z bit."""
    refs = {"source": ops.ref(source), "target": ops.ref(target)}
    bit = 0
    for op in gate_ops:
        qubits = [refs[q] for q in op.qubits]
        if op.name == "rot":
            await ops.gate("ROT", *qubits, angle=op.angle, axis=op.axis)
        elif op.name == "cnot":
            await ops.gate("CNOT", *qubits)
        else:  # measure_z
            bits, _ = await ops.measure_array(qubits, "Z")
            bit = int(bits[0])
    return bit


Parities = dict[int, tuple[trio.Event, list[int]]]


def record_peer_parity(parities: Parities, msg: PurifyParity) -> None:
    """File the peer's parity of a round (it may arrive before our own is sent)."""
    event, box = parities.setdefault(msg.round_id, (trio.Event(), []))
    box.append(msg.parity)
    event.set()


async def parity_round(ops: QuantumOps, send: Callable[[bytes], Awaitable[None]],
                       parities: Parities, rnd: PurificationRound, src: EndToEnd,
                       tgt: EndToEnd) -> bool:
    """Apply the round's gates, exchange parities with the peer; True keeps ``src``.

    A failed local operation still sends a parity (so the peer is not left waiting) and
    discards the pair; a discarded source is freed here.
    """
    try:
        bit = await apply_ops(ops, rnd.ops, src.mine.slot, tgt.mine.slot)
        failed = False
    except DaemonError:
        bit, failed = 0, True
    await send(encoder.encode(rnd.local_parity(bit)))
    event, box = parities.setdefault(rnd.round_id, (trio.Event(), []))
    await event.wait()
    del parities[rnd.round_id]
    keep = rnd.peer_parity(PurifyParity(rnd.round_id, box[0])) is Decision.KEEP and not failed
    if not keep:
        with contextlib.suppress(DaemonError):
            await ops.discard(ops.ref(src.mine.slot))
    return keep


@dataclass
class PurifierA:
    """End a's recurrence: level queues, one round at a time."""

    ops: QuantumOps
    protocol: str
    rounds: int
    send: Callable[[bytes], Awaitable[None]]
    rng: np.random.Generator
    levels: list[deque[EndToEnd]] = field(default_factory=list)
    parities: dict[int, tuple[trio.Event, list[int]]] = field(default_factory=dict)
    attempted: int = 0
    kept: int = 0
    _ids: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.levels = [deque() for _ in range(self.rounds)]

    def peer_parity(self, msg: PurifyParity) -> None:
        record_peer_parity(self.parities, msg)

    async def run(self, ready: trio.MemoryReceiveChannel, final: trio.MemorySendChannel) -> None:
        async for pair in ready:
            self.levels[0].append(pair)
            for k in range(self.rounds):
                while len(self.levels[k]) >= 2:
                    src, tgt = self.levels[k].popleft(), self.levels[k].popleft()
                    if await self._round(src, tgt):
                        if k + 1 == self.rounds:
                            final.send_nowait(src)
                        else:
                            self.levels[k + 1].append(src)

    async def _round(self, src: EndToEnd, tgt: EndToEnd) -> bool:
        rid = next(self._ids)
        rnd, start = PurificationRound.initiate(rid, self.protocol, self.rng)
        self.attempted += 1
        await self.send(encoder.encode(PurifyRound(start, src.mine.pair, tgt.mine.pair)))
        if await parity_round(self.ops, self.send, self.parities, rnd, src, tgt):
            self.kept += 1
            return True
        return False


@dataclass
class PurifierB:
    """End b: corrected end-to-end pairs by a's pair id; rounds and final measurements wait
    for the pairs they name."""

    ops: QuantumOps
    send: Callable[[bytes], Awaitable[None]]
    held: dict[int, EndToEnd] = field(default_factory=dict)
    changed: trio.Condition = field(default_factory=trio.Condition)
    parities: dict[int, tuple[trio.Event, list[int]]] = field(default_factory=dict)

    async def add(self, pair: EndToEnd) -> None:
        """Undo the swaps' Pauli frame physically, then make the pair available."""
        if pair.frame:
            await self.ops.gate(bd.BELL_PAULI[pair.frame], self.ops.ref(pair.mine.slot))
        pair.frame = 0
        async with self.changed:
            self.held[pair.far_pair] = pair
            self.changed.notify_all()

    async def take(self, ids: list[int]) -> list[EndToEnd]:
        async with self.changed:
            while any(i not in self.held for i in ids):
                await self.changed.wait()
            return [self.held.pop(i) for i in ids]

    async def put_back(self, pair: EndToEnd) -> None:
        async with self.changed:
            self.held[pair.far_pair] = pair
            self.changed.notify_all()

    def peer_parity(self, msg: PurifyParity) -> None:
        record_peer_parity(self.parities, msg)

    async def round(self, msg: PurifyRound) -> None:
        rnd = PurificationRound.accept(msg.start)
        src, tgt = await self.take([msg.source, msg.target])
        if await parity_round(self.ops, self.send, self.parities, rnd, src, tgt):
            await self.put_back(src)
