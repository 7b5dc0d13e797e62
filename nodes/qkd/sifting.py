"""BB84 sifting and QBER sampling as two sans-I/O cores (sender and receiver).

The receiver batches its detection records into ``SiftRequest``s; the sender answers from its
own PRF choices with the basis match, the intensities, and its bits at a random sample of the
matched signal positions; the receiver counts errors in that sample and reports them. Both
ends drop the sample and append the rest to their sifted key in the same order. No core ever
sees the other's key: they share only the messages in ``nodes.qkd.messages``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emulator.prf import sender_choices
from nodes.qkd import messages as m

SIGNAL = 0  # intensity index of the signal state; only these bits enter the key


@dataclass
class SiftStats:
    detections: int = 0
    detections_by_intensity: dict[int, int] = field(default_factory=dict)
    matched_by_intensity: dict[int, int] = field(default_factory=dict)
    errors_by_intensity: dict[int, int] = field(default_factory=dict)  # decoys: fully revealed
    sample_bits: int = 0
    sample_errors: int = 0
    batches: int = 0

    @property
    def qber(self) -> float:
        return self.sample_errors / self.sample_bits if self.sample_bits else float("nan")


def _add(counter: dict[int, int], values: np.ndarray) -> None:
    for index, count in zip(*np.unique(values, return_counts=True)):
        counter[int(index)] = counter.get(int(index), 0) + int(count)


class SiftSender:
    """Sender's core: answers sift requests from its PRF key; never sees receiver outcomes."""

    def __init__(self, prf_key: bytes, intensity_probabilities: list[float],
                 sample_fraction: float, rng: np.random.Generator) -> None:
        self.prf_key = prf_key
        self.intensity_probabilities = intensity_probabilities
        self.sample_fraction = sample_fraction
        self.rng = rng
        self.stats = SiftStats()
        self.key: list[np.ndarray] = []

    def on_sift_request(self, request: m.SiftRequest) -> m.SiftReply:
        slots = np.frombuffer(request.slots, dtype="<u8")
        their_bases = np.frombuffer(request.bases, dtype=np.uint8)
        if len(slots) != len(their_bases):
            raise ValueError("sift request: slots and bases differ in length")
        bits, bases, intensity = sender_choices(self.prf_key, slots, self.intensity_probabilities)
        match = bases == their_bases
        self.stats.batches += 1
        self.stats.detections += len(slots)
        _add(self.stats.detections_by_intensity, intensity)
        _add(self.stats.matched_by_intensity, intensity[match])
        signal_bits = bits[match & (intensity == SIGNAL)]
        sample = self.rng.random(len(signal_bits)) < self.sample_fraction
        positions = np.flatnonzero(sample).astype("<u4")
        self.key.append(signal_bits[~sample])
        return m.SiftReply(
            batch=request.batch,
            match=np.packbits(match).tobytes(),
            intensity=intensity.astype(np.uint8).tobytes(),
            sample_positions=positions.tobytes(),
            sample_bits=signal_bits[sample].astype(np.uint8).tobytes(),
        )

    def on_sample_result(self, result: m.SampleResult) -> None:
        self.stats.sample_bits += result.sampled
        self.stats.sample_errors += result.errors

    @property
    def sifted_bits(self) -> int:
        return sum(len(k) for k in self.key)


class SiftReceiver:
    """Receiver's core: turns detection records into sift requests and keeps its sifted key."""

    def __init__(self) -> None:
        self.stats = SiftStats()
        self.key: list[np.ndarray] = []
        self._buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._next_batch = 0

    def add_detections(self, slots: bytes, bases: bytes, outcomes: bytes) -> None:
        self._buffer.append((np.frombuffer(slots, dtype="<u8"),
                             np.frombuffer(bases, dtype=np.uint8),
                             np.frombuffer(outcomes, dtype=np.uint8)))

    @property
    def buffered(self) -> int:
        return sum(len(s) for s, _, _ in self._buffer)

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    def next_request(self) -> m.SiftRequest | None:
        """Everything buffered since the last request, or None if nothing clicked."""
        if not self.buffered:
            self._buffer.clear()
            return None
        slots = np.concatenate([s for s, _, _ in self._buffer])
        bases = np.concatenate([b for _, b, _ in self._buffer])
        outcomes = np.concatenate([o for _, _, o in self._buffer])
        self._buffer.clear()
        batch = self._next_batch
        self._next_batch += 1
        self._pending[batch] = (bases, outcomes)
        return m.SiftRequest(batch=batch, slots=slots.astype("<u8").tobytes(),
                             bases=bases.tobytes())

    def on_sift_reply(self, reply: m.SiftReply) -> m.SampleResult:
        bases, outcomes = self._pending.pop(reply.batch)
        match = np.unpackbits(np.frombuffer(reply.match, dtype=np.uint8), count=len(bases))
        match = match.astype(bool)
        intensity = np.frombuffer(reply.intensity, dtype=np.uint8)
        self.stats.batches += 1
        self.stats.detections += len(bases)
        _add(self.stats.detections_by_intensity, intensity)
        _add(self.stats.matched_by_intensity, intensity[match])
        signal_bits = outcomes[match & (intensity == SIGNAL)]
        positions = np.frombuffer(reply.sample_positions, dtype="<u4")
        their_bits = np.frombuffer(reply.sample_bits, dtype=np.uint8)
        errors = int(np.count_nonzero(signal_bits[positions] != their_bits))
        self.stats.sample_bits += len(positions)
        self.stats.sample_errors += errors
        keep = np.ones(len(signal_bits), dtype=bool)
        keep[positions] = False
        self.key.append(signal_bits[keep])
        return m.SampleResult(batch=reply.batch, errors=errors, sampled=len(positions))

    @property
    def sifted_bits(self) -> int:
        return sum(len(k) for k in self.key)
