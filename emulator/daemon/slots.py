"""Names of memory slots, memory specifications and the faults a memory request can raise.

Shared by ``memories`` (which raises them) and the daemon's request handlers (which turn them
into ``Error`` replies); kept apart so that ``memories`` stays about states and time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple


class SlotRef(NamedTuple):
    """Handle of one memory slot: ``slot`` (0-based) of ``node``."""

    node: str
    slot: int


@dataclass(frozen=True)
class MemorySpec:
    """One node's memory: ``slots`` qubits, T1/T2 in emulated seconds (``math.inf`` = none),
    ``cutoff``: a stored qubit older than this many seconds is discarded with its partners;
    ``detuning_hz``: the node's clock offset, at which its qubits precess (physics/clocks.py)."""

    slots: int
    t1: float = math.inf
    t2: float = math.inf
    cutoff: float | None = None
    detuning_hz: float = 0.0

    def __post_init__(self) -> None:
        if self.slots < 0:
            raise ValueError("slots must be >= 0")
        if self.t1 <= 0 or self.t2 <= 0:
            raise ValueError("T1 and T2 must be > 0")
        if self.t2 > 2 * self.t1:
            raise ValueError(f"T2 = {self.t2} exceeds 2 T1 = {2 * self.t1}")
        if self.cutoff is not None and self.cutoff <= 0:
            raise ValueError("cutoff must be > 0")
        if not math.isfinite(self.detuning_hz):
            raise ValueError("detuning_hz must be finite")


@dataclass(frozen=True)
class Expired:
    """Report of a state discarded by the cutoff: all its slots were freed at ``at``."""

    refs: tuple[SlotRef, ...]
    oldest_stored_at: float
    at: float


class MemoryFault(Exception):
    """Base of the errors a request on the memories can raise (the requesting node's fault)."""


class NotOwner(MemoryFault):
    """A node asked for an operation on a slot of another node (DESIGN §4: refused)."""

    def __init__(self, node: str, ref: SlotRef) -> None:
        super().__init__(f"node {node!r} may not act on slot {ref.slot} of node {ref.node!r}")
        self.node = node
        self.ref = ref


class NoFreeSlot(MemoryFault):
    """All slots of the node are occupied."""


class EmptySlot(MemoryFault):
    """The slot holds no qubit (never stored, measured, discarded, or unknown node/slot)."""


class CutoffExpired(MemoryFault):
    """The slot's qubit was older than the cutoff and has just been discarded."""

    def __init__(self, expired: Expired) -> None:
        super().__init__(f"cutoff expired for {list(expired.refs)} at t={expired.at:.6g}")
        self.expired = expired


class RegisterTooLarge(MemoryFault):
    """An operation would entangle more qubits than the density-matrix limit allows."""
