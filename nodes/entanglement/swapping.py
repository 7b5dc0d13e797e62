"""Entanglement swapping bookkeeping (sans-I/O): what repeaters swap and what the ends learn.

A path ``a, r1, ..., rk, b`` has one link per hop; every heralded pair has a global id. A
repeater holding a pair of its left link and one of its right link Bell-measures them and
publishes a ``SwapRecord`` (both pair ids, outcome, its storage time) to both directions; the
ends join records into end-to-end pairs and keep the Pauli frame ``xor`` of the outcomes'
Bell indices, so no physical correction is needed before a measurement (``estimate.flips``).
No I/O, no clock: the trio shells in ``pairs.py`` feed these cores and send what they return.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import msgspec

from emulator.physics import bell_diagonal as bd
from nodes.entanglement.purification import PurifyParity, PurifyStart
from nodes.errors import MalformedMessage


class SwapRecord(msgspec.Struct, tag="swap"):
    """Repeater ``at`` joined pair ``left`` (its left link) and ``right`` with BSM ``(m1, m2)``
    at emulated time ``t``; ``stored`` = its two qubits' storage times summed (emulated s,
    from the daemon's timestamps: what the node measured, not a model)."""

    at: str
    left: int
    right: int
    m1: int
    m2: int
    t: float
    stored: float


class Outcomes(msgspec.Struct, tag="outcomes"):
    """End ``a``'s measurements, for ``b`` to correlate: per end-to-end pair its own pair id,
    the basis, the outcome bit and its own qubit's storage time (emulated s)."""

    pairs: list[int]
    bases: str
    outcomes: bytes
    stored: list[float]


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


def decode(payload: bytes) -> ChainMessage:
    """A chain message from the wire; a frame that is none raises ``MalformedMessage``."""
    try:
        return decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"not a chain message: {exc}") from None


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
    stored: dict[str, float]  # repeater name -> storage time of its two qubits (s)
    t_last_swap: float


class RepeaterCore:
    """Swap-asap at one repeater: the oldest unswapped pair of each side is joined."""

    def __init__(self) -> None:
        self.left: deque[Held] = deque()
        self.right: deque[Held] = deque()
        self.swaps = 0

    def add(self, side: str, held: Held) -> None:
        (self.left if side == "left" else self.right).append(held)

    def next_swap(self) -> tuple[Held, Held] | None:
        if self.left and self.right:
            return self.left.popleft(), self.right.popleft()
        return None

    def record(self, node: str, left: Held, right: Held, m1: int, m2: int,
               t: float) -> SwapRecord:
        """The record of a swap done (counted) of ``left`` and ``right`` at time ``t``."""
        self.swaps += 1
        stored = (t - left.t_stored) + (t - right.t_stored)
        return SwapRecord(node, left.pair, right.pair, m1, m2, t, stored)


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

    def _walk(self, pair: int) -> tuple[int, int, dict[str, float], float, list[int]] | None:
        frame, stored, t_last, used = 0, {}, float("-inf"), []
        current = pair
        for _ in range(self.hops):
            rec = self._by_near.get(current)
            if rec is None:
                return None
            used.append(current)
            frame = int(bd.COMPOSE[frame, bd.bell_index(rec.m1, rec.m2)])
            stored[rec.at] = rec.stored
            t_last = max(t_last, rec.t)
            current = rec.right if self.side == "a" else rec.left
        return current, frame, stored, t_last, used

    def _complete(self, candidates: list[int]) -> list[EndToEnd]:
        out = []
        for pair in candidates:
            walked = self._walk(pair)
            if walked is None:
                continue
            far, frame, stored, t_last, used = walked
            for key in used:
                del self._by_near[key]
            out.append(EndToEnd(self._mine.pop(pair), far, frame, stored, t_last))
        return out

    def waiting(self) -> int:
        return len(self._mine)
