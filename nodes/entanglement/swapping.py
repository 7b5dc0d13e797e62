"""Entanglement swapping bookkeeping (sans-I/O): what repeaters swap and what the ends learn.

A path ``a, r1, ..., rk, b`` has one link per hop; every heralded pair has a global id. A
repeater holding a pair of its left link and one of its right link Bell-measures them and
publishes a ``SwapRecord`` (both pair ids, outcome, its storage decay) to both directions; the
ends join records into end-to-end pairs and keep the Pauli frame ``xor`` of the outcomes'
Bell indices, so no physical correction is needed before a measurement (``estimate.flips``).
No I/O, no clock: the trio shells in ``pairs.py`` feed these cores and send what they return.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import msgspec

from emulator.physics import states as st
from nodes.entanglement.purification import PurifyParity, PurifyStart


class SwapRecord(msgspec.Struct, tag="swap"):
    """Repeater ``at`` joined pair ``left`` (its left link) and ``right`` with BSM ``(m1, m2)``
    at emulated time ``t``; ``decay`` = sum of its two qubits' ``storage_time / T2``."""

    at: str
    left: int
    right: int
    m1: int
    m2: int
    t: float
    decay: float


class Outcomes(msgspec.Struct, tag="outcomes"):
    """End ``a``'s measurements, for ``b`` to correlate: per end-to-end pair its own pair id,
    the basis, the outcome bit and its own qubit's ``storage_time / T2``."""

    pairs: list[int]
    bases: str
    outcomes: bytes
    decay: list[float]


class Finished(msgspec.Struct, tag="finished"):
    """End ``a`` is done: ``measured`` end-to-end pairs; repeaters stop, ``b`` reports."""

    measured: int


class FinishedAck(msgspec.Struct, tag="finished_ack"):
    """End ``b`` saw ``Finished``; travels back to ``a``. Each channel's last message in each
    direction is ``Finished`` / ``FinishedAck``, so nobody closes with data still in flight."""


class PurifyRound(msgspec.Struct, tag="purify_round"):
    """a -> b: purify end-to-end pairs ``source`` and ``target`` (named by a's pair ids)."""

    start: PurifyStart
    source: int
    target: int


ChainMessage = SwapRecord | Outcomes | Finished | FinishedAck | PurifyRound | PurifyParity
encoder = msgspec.msgpack.Encoder()
decoder = msgspec.msgpack.Decoder(ChainMessage)


@dataclass
class Held:
    """A heralded half this node holds: pair id, slot, emission time."""

    pair: int
    slot: int
    t_stored: float


@dataclass
class EndToEnd:
    """An end-to-end pair as one end sees it."""

    mine: Held  # this end's half
    far_pair: int  # the pair id of the far end's half (on the last/first link)
    frame: int  # Bell index of the Pauli that takes the pair to Phi+ (xor of the swaps)
    decay: float  # repeaters' storage decay summed
    t_last_swap: float


class RepeaterCore:
    """Swap-asap at one repeater: the oldest unswapped pair of each side is joined."""

    def __init__(self) -> None:
        self.left: deque[Held] = deque()
        self.right: deque[Held] = deque()

    def add(self, side: str, held: Held) -> None:
        (self.left if side == "left" else self.right).append(held)

    def next_swap(self) -> tuple[Held, Held] | None:
        if self.left and self.right:
            return self.left.popleft(), self.right.popleft()
        return None

    @staticmethod
    def record(node: str, left: Held, right: Held, m1: int, m2: int, t: float,
               t2_s: float | None) -> SwapRecord:
        stored = (t - left.t_stored) + (t - right.t_stored)
        decay = stored / t2_s if t2_s else 0.0
        return SwapRecord(node, left.pair, right.pair, m1, m2, t, decay)


class EndTracker:
    """One end's view: its own halves plus the repeaters' records -> complete end-to-end pairs.

    ``side`` is ``"a"`` (records are walked left to right from our pair) or ``"b"``;
    ``hops`` is the number of repeaters, i.e. records each end-to-end pair needs.
    """

    def __init__(self, side: str, hops: int) -> None:
        if side not in ("a", "b"):
            raise ValueError("side must be 'a' or 'b'")
        self.side = side
        self.hops = hops
        self._mine: dict[int, Held] = {}
        self._by_near: dict[int, SwapRecord] = {}  # record keyed by the pair on our side

    def own(self, held: Held) -> list[EndToEnd]:
        self._mine[held.pair] = held
        return self._complete([held.pair])

    def record(self, rec: SwapRecord) -> list[EndToEnd]:
        near = rec.left if self.side == "a" else rec.right
        self._by_near[near] = rec
        # which of our pairs could this complete? walk back from ``near`` is not possible
        # without an index, so try every pair still waiting (few: bounded by our slots)
        return self._complete(list(self._mine))

    def _walk(self, pair: int) -> tuple[int, int, float, float, list[int]] | None:
        frame, decay, t_last, used = 0, 0.0, float("-inf"), []
        current = pair
        for _ in range(self.hops):
            rec = self._by_near.get(current)
            if rec is None:
                return None
            used.append(current)
            frame = int(st.COMPOSE[frame, st.bell_index(rec.m1, rec.m2)])
            decay += rec.decay
            t_last = max(t_last, rec.t)
            current = rec.right if self.side == "a" else rec.left
        return current, frame, decay, t_last, used

    def _complete(self, candidates: list[int]) -> list[EndToEnd]:
        out = []
        for pair in candidates:
            walked = self._walk(pair)
            if walked is None:
                continue
            far, frame, decay, t_last, used = walked
            for key in used:
                del self._by_near[key]
            out.append(EndToEnd(self._mine.pop(pair), far, frame, decay, t_last))
        return out

    def waiting(self) -> int:
        return len(self._mine)
