"""BB84 sifting, decoy disclosure and QBER sampling as two sans-I/O cores.

The receiver batches its detection records into ``SiftRequest``s; the sender answers from its
own PRF choices with the basis match, the announced intensity of every clicked slot, its bits
at a random sample of the matched signal positions, and its bits at every matched decoy and
vacuum position (those never enter the key). The receiver counts errors and reports them.
Both ends then hold, per batch, the same ``BatchRecord``: counts per intensity and the kept
signal bits (sample removed), aligned bit for bit. No core ever sees the other's key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emulator.prf import sender_choices
from nodes.qkd import messages as m

SIGNAL = 0  # intensity index of the signal state; only these bits enter the key


@dataclass
class BatchRecord:
    """What both ends know about one sifted batch (identical at both ends once complete)."""

    batch: int
    slot_end: int
    detections: np.ndarray  # per intensity index
    matched: np.ndarray  # per intensity index (bases equal)
    errors: np.ndarray  # per intensity: decoys all matched bits, signal the sample only
    sample_bits: int
    key: np.ndarray  # kept signal bits (uint8 0/1)
    complete: bool = False  # the receiver's error counts are known


@dataclass
class SiftStats:
    """Totals over all batches (for results and progress)."""

    detections: np.ndarray
    matched: np.ndarray
    errors: np.ndarray
    sample_bits: int = 0
    batches: int = 0

    @classmethod
    def empty(cls, intensities: int) -> SiftStats:
        zeros = lambda: np.zeros(intensities, dtype=np.int64)
        return cls(zeros(), zeros(), zeros())

    def add(self, record: BatchRecord) -> None:
        self.detections += record.detections
        self.matched += record.matched
        self.errors += record.errors
        self.sample_bits += record.sample_bits
        self.batches += 1

    @property
    def qber(self) -> float:
        """Signal QBER from the revealed samples."""
        return self.errors[SIGNAL] / self.sample_bits if self.sample_bits else float("nan")


def _counts(values: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(values, minlength=n)[:n].astype(np.int64)


class SiftSender:
    """Sender's core: answers sift requests from its PRF key; never sees receiver outcomes."""

    def __init__(self, prf_key: bytes, intensity_probabilities: list[float],
                 sample_fraction: float, rng: np.random.Generator) -> None:
        self.prf_key = prf_key
        self.intensity_probabilities = list(intensity_probabilities)
        self.sample_fraction = sample_fraction
        self.rng = rng
        self.records: dict[int, BatchRecord] = {}
        self._decoy_bits: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def intensities(self) -> int:
        return len(self.intensity_probabilities)

    def on_sift_request(self, request: m.SiftRequest) -> m.SiftReply:
        slots = np.frombuffer(request.slots, dtype="<u8")
        their_bases = np.frombuffer(request.bases, dtype=np.uint8)
        if len(slots) != len(their_bases):
            raise ValueError("sift request: slots and bases differ in length")
        bits, bases, intensity = sender_choices(self.prf_key, slots, self.intensity_probabilities)
        match = bases == their_bases
        signal_bits = bits[match & (intensity == SIGNAL)]
        decoy = match & (intensity != SIGNAL)
        sample = self.rng.random(len(signal_bits)) < self.sample_fraction
        positions = np.flatnonzero(sample).astype("<u4")
        n = self.intensities
        self.records[request.batch] = BatchRecord(
            batch=request.batch, slot_end=request.slot_end,
            detections=_counts(intensity, n), matched=_counts(intensity[match], n),
            errors=np.zeros(n, dtype=np.int64), sample_bits=len(positions),
            key=signal_bits[~sample])
        return m.SiftReply(
            batch=request.batch,
            match=np.packbits(match).tobytes(),
            intensity=intensity.astype(np.uint8).tobytes(),
            sample_positions=positions.tobytes(),
            sample_bits=signal_bits[sample].astype(np.uint8).tobytes(),
            decoy_bits=bits[decoy].astype(np.uint8).tobytes(),
        )

    def on_sample_result(self, result: m.SampleResult) -> BatchRecord:
        record = self.records[result.batch]
        if result.sampled != record.sample_bits:
            raise ValueError(f"batch {result.batch}: receiver sampled {result.sampled} bits, "
                             f"we revealed {record.sample_bits}")
        record.errors[SIGNAL] = result.errors
        for index, errors in result.decoy_errors.items():
            if not 0 < index < self.intensities:
                raise ValueError(f"batch {result.batch}: no decoy intensity {index}")
            record.errors[index] = errors
        record.complete = True
        return record


class SiftReceiver:
    """Receiver's core: turns detection records into sift requests and keeps its sifted key."""

    def __init__(self, intensities: int = 1) -> None:
        self.n_intensities = intensities
        self.records: dict[int, BatchRecord] = {}
        self._buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._slot_end = 0
        self._pending: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
        self._next_batch = 0

    def add_detections(self, slots: bytes, bases: bytes, outcomes: bytes,
                       frame_end: int = 0) -> None:
        self._buffer.append((np.frombuffer(slots, dtype="<u8"),
                             np.frombuffer(bases, dtype=np.uint8),
                             np.frombuffer(outcomes, dtype=np.uint8)))
        self._slot_end = max(self._slot_end, frame_end)

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
        self._pending[batch] = (bases, outcomes, self._slot_end)
        return m.SiftRequest(batch=batch, slots=slots.astype("<u8").tobytes(),
                             bases=bases.tobytes(), slot_end=self._slot_end)

    def on_sift_reply(self, reply: m.SiftReply) -> tuple[m.SampleResult, BatchRecord]:
        bases, outcomes, slot_end = self._pending.pop(reply.batch)
        match = np.unpackbits(np.frombuffer(reply.match, dtype=np.uint8), count=len(bases))
        match = match.astype(bool)
        intensity = np.frombuffer(reply.intensity, dtype=np.uint8)
        n = self.n_intensities
        if len(intensity) != len(bases) or (len(intensity) and intensity.max() >= n):
            raise ValueError(f"batch {reply.batch}: bad intensity announcement")
        signal_bits = outcomes[match & (intensity == SIGNAL)]
        positions = np.frombuffer(reply.sample_positions, dtype="<u4")
        their_bits = np.frombuffer(reply.sample_bits, dtype=np.uint8)
        errors = np.zeros(n, dtype=np.int64)
        errors[SIGNAL] = np.count_nonzero(signal_bits[positions] != their_bits)
        decoy = match & (intensity != SIGNAL)
        decoy_wrong = outcomes[decoy] != np.frombuffer(reply.decoy_bits, dtype=np.uint8)
        errors += _counts(intensity[decoy][decoy_wrong], n) * (np.arange(n) != SIGNAL)
        keep = np.ones(len(signal_bits), dtype=bool)
        keep[positions] = False
        record = BatchRecord(
            batch=reply.batch, slot_end=slot_end, detections=_counts(intensity, n),
            matched=_counts(intensity[match], n), errors=errors, sample_bits=len(positions),
            key=signal_bits[keep], complete=True)
        self.records[reply.batch] = record
        result = m.SampleResult(
            batch=reply.batch, errors=int(errors[SIGNAL]), sampled=len(positions),
            decoy_errors={i: int(errors[i]) for i in range(1, n)})
        return result, record
