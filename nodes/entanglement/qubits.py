"""The quantum operations an app (or the local app socket) asks of its node's daemon connection.

A thin typed layer over ``DaemonClient.request`` for the state-level messages of
``emulator.daemon.protocol``: start a link, wait for heralded pairs, prepare, gate, measure,
Bell-measure, discard. Every qubit is a ``QubitRef`` of this node; the daemon refuses others.
"""

from __future__ import annotations

import numpy as np

from emulator.daemon import protocol as p
from nodes.daemon_client import DaemonClient

QubitRef = p.QubitRef


class QuantumOps:
    """One node's state-level operations (all awaitable, all on its own qubits)."""

    def __init__(self, daemon: DaemonClient, node: str) -> None:
        self.daemon = daemon
        self.node = node

    def ref(self, slot: int) -> QubitRef:
        return QubitRef(self.node, slot)

    async def start_link(self, link: str, max_pending: int = 0) -> p.EntangleStarted:
        return await self.daemon.request(p.EntangleStart, link=link, max_pending=max_pending)

    async def stop_link(self, link: str) -> None:
        await self.daemon.request(p.EntangleStop, link=link)

    async def pairs(self, link: str, max: int = 1024, timeout_s: float = 1.0) -> p.PairsDelivered:
        """Heralded pairs of ``link`` at this node (at least one unless ``timeout_s`` passed)."""
        return await self.daemon.request(p.PairAwait, link=link, max=max, timeout_s=timeout_s)

    async def prepare(self, theta: float = 0.0, phi: float = 0.0) -> p.Prepared:
        return await self.daemon.request(p.QubitPrepare, theta=theta, phi=phi)

    async def gate(self, gate: str, *qubits: QubitRef, angle: float = 0.0,
                   axis: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> float:
        done = await self.daemon.request(p.QubitGate, gate=gate, qubits=list(qubits),
                                         angle=angle, axis=axis)
        return done.t

    async def measure(self, qubits: list[QubitRef], bases: list[str] | str) -> p.Measured:
        """Measure each qubit in its basis (or all in one); outcomes 0 = +1 eigenstate."""
        bases = [bases] if isinstance(bases, str) else list(bases)
        return await self.daemon.request(p.QubitMeasure, qubits=list(qubits), bases=bases)

    async def measure_array(self, qubits: list[QubitRef], bases: list[str] | str
                            ) -> tuple[np.ndarray, float]:
        reply = await self.measure(qubits, bases)
        return np.frombuffer(reply.outcomes, dtype=np.uint8), reply.t

    async def bell_measure(self, q1: QubitRef, q2: QubitRef) -> p.BellResult:
        return await self.daemon.request(p.BellMeasure, q1=q1, q2=q2)

    async def discard(self, *qubits: QubitRef) -> None:
        await self.daemon.request(p.QubitDiscard, qubits=list(qubits))

    async def stats(self) -> p.MemoryStats:
        return await self.daemon.request(p.MemoryStatsRequest)
