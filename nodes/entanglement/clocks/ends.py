"""clocks.compare as sans-I/O pieces: the chain messages, the fusion bookkeeping and the
Ramsey estimators each node reports (it knows only its own outcomes and timestamps).

Chain n0 - n1 - ... : n0 opens each round on a heralded pair with ``Start`` (the agreed
measurement time rides along); each inner node fuses its two halves (X^corr, CNOT, Z
measurement, X if its sign is -1) and passes ``Start`` on with its outcome as the next
correction; the last node corrects. A pair that waited longer than ``max_age_s`` before its
round began is dropped at both ends (it precessed with the wrong signs meanwhile). At ``t_meas`` n0 measures Y, the others X; the parity
bits travel back (``Parity``, XOR-ed at each hop) so that n0 alone holds each round's parity.
"""

from __future__ import annotations

import math
import statistics

import msgspec

from emulator.physics import clocks
from nodes.errors import MalformedMessage

CHECKPOINTS = 6  # estimates at rounds M/32, M/16, ..., M: uncertainty against the pairs used
BLOCKS = 8  # the rounds split in blocks: the spread of the block estimates is a measured sigma


class Start(msgspec.Struct, tag="start", array_like=True):
    """k -> k+1: round ``round`` uses pair ``pair`` of their link; apply X^``corr`` to your
    half (needed since ``t_up``, the sender's fusion); n0 measures at ``t_meas``, and every
    node times its measurement so that its net precession is s_i ``tau`` (``measure_time``)."""

    round: int
    pair: int
    corr: int
    t_meas: float
    tau: float
    t_up: float


class Parity(msgspec.Struct, tag="parity", array_like=True):
    """k+1 -> k: XOR of the outcomes of nodes k+1 ... N-1 in round ``round``."""

    round: int
    bit: int


class Drop(msgspec.Struct, tag="drop", array_like=True):
    """k -> k+1: pair ``pair`` waited too long in memory (its phase is unknown): discard it."""

    pair: int


class End(msgspec.Struct, tag="end", array_like=True):
    rounds: int


Message = Start | Parity | Drop | End
encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def decode(payload: bytes) -> Message:
    """A clocks message from the wire; anything else (or a bit not 0/1) is ``MalformedMessage``."""
    try:
        message = _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"not a clocks message: {exc}") from None
    bit = message.corr if isinstance(message, Start) else getattr(message, "bit", 0)
    if bit not in (0, 1):
        raise MalformedMessage(f"{type(message).__name__}: bit {bit}")
    return message


def inner_flips(corr: int, sign: int) -> tuple[int, int]:
    """(X before the CNOT, X after the Z measurement) at a fusing node: the correction it was
    sent, then the flip that gives its qubit the sign -1 in (|x> + |x̄>)/sqrt 2."""
    return corr, int(sign == -1)


def last_flip(corr: int, sign: int) -> int:
    """X on the last node's half: its correction combined with its sign flip."""
    return corr ^ int(sign == -1)


def held_time(t_stored: float, t_up: float, corr: int, t_fix: float) -> float:
    """Signed time a received half has gathered its node's phase by ``t_fix`` (its correction):
    + before the upstream fusion at ``t_up``, (-1)^corr between that and the correction (the
    uncorrected branch has the half flipped)."""
    start = min(t_up, t_fix)
    return (max(start, t_stored) - t_stored) + (1 - 2 * corr) * (t_fix - max(start, t_stored))


def measure_time(tau: float, sign: int, pre: float, t_last: float) -> float:
    """When to measure: after its last operation at ``t_last`` the qubit gathers with sign s, so
    pre + s (t - t_last) = s tau gives t = t_last + tau - s pre (a spin echo for s = -1)."""
    return t_last + tau - sign * pre


class RamseyEstimate:
    """+-1 outcomes of M interrogations of phase Phi = 2 pi T D: D = arcsin(mean)/(2 pi T),
    standard deviation 1/(sqrt M 2 pi T) (``physics/clocks.py``); T = the mean of the measured
    interrogation times. Estimates at checkpoints show the 1/sqrt M fall; ``sigma_blocks_hz``
    = std of the estimates of ``BLOCKS`` equal blocks / sqrt(BLOCKS), measured, not modelled."""

    def __init__(self, planned: int) -> None:
        self.planned = planned
        self.count = 0
        self.total = 0  # sum of +-1
        self.time = 0.0
        self.checkpoints: list[dict] = []
        self._marks = sorted({max(1, planned >> k) for k in range(CHECKPOINTS)})
        self._block = max(1, planned // BLOCKS)
        self._blocks: list[list[float]] = [[0, 0.0, 0]]  # sum +-1, time, count per block

    def add(self, bit: int, t_interrogation: float) -> None:
        self.count += 1
        self.total += 1 - 2 * bit
        self.time += t_interrogation
        block = self._blocks[-1]
        block[0] += 1 - 2 * bit
        block[1] += t_interrogation
        block[2] += 1
        if block[2] == self._block:
            self._blocks.append([0, 0.0, 0])
        if self.count in self._marks:
            self.checkpoints.append(self.summary())

    def summary(self) -> dict:
        if not self.count or self.time <= 0:
            return {"rounds": self.count, "estimate_hz": None, "sigma_hz": None}
        t = self.time / self.count
        mean = self.total / self.count
        scale = clocks.TWO_PI * t
        full = [b for b in self._blocks if b[2] == self._block and b[1] > 0]
        spread = None
        if len(full) >= 2:
            est = [clocks.phase_estimate(b[0] / b[2]) / (clocks.TWO_PI * b[1] / b[2]) for b in full]
            spread = statistics.stdev(est) / math.sqrt(len(full))
        return {"rounds": self.count, "parity_mean": mean, "interrogation_s": t,
                "estimate_hz": clocks.phase_estimate(mean) / scale,
                "sigma_hz": math.sqrt(clocks.phase_variance(self.count)) / scale,
                "sigma_blocks_hz": spread}
