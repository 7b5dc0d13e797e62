"""BB84 sifting, decoy disclosure and QBER sampling as two sans-I/O cores.

The receiver batches its detection records into ``SiftRequest``s; the sender answers from its
own PRF choices with the basis match, the announced intensity of every clicked slot, and its
bits where the key rule reveals them. Two key rules:

* ``"signal"`` (asymptotic GLLP): the key is the matched signal-intensity bits minus a random
  sample that is revealed to estimate the QBER; every matched decoy/vacuum bit is revealed.
* ``"z_basis"`` (finite-key, after Lim et al. 2014): the key is every matched Z-basis bit of
  every intensity; every matched X-basis bit is revealed (the test set), no extra sample.

The receiver counts errors in what was revealed and reports them. Both ends then hold, per
batch, the same ``BatchRecord``: counts per intensity and the key bits, aligned bit for bit.
No core ever sees the other's key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emulator.prf import sender_choices
from nodes.errors import MalformedMessage, UnexpectedMessage
from nodes.qkd import messages as m

SIGNAL = 0  # intensity index of the signal state
KEY_RULES = ("signal", "z_basis")
Z_BASIS = 0


def key_masks(rule: str, match: np.ndarray, intensity: np.ndarray,
              bases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(candidate key slots, revealed slots) among the clicked slots under ``rule``."""
    if rule == "signal":
        return match & (intensity == SIGNAL), match & (intensity != SIGNAL)
    if rule == "z_basis":
        return match & (bases == Z_BASIS), match & (bases != Z_BASIS)
    raise ValueError(f"unknown key rule {rule!r}; choose from {KEY_RULES}")


@dataclass
class BatchRecord:
    """What both ends know about one sifted batch (identical at both ends once complete)."""

    batch: int
    slot_end: int
    detections: np.ndarray  # per intensity index
    matched: np.ndarray  # per intensity index (bases equal)
    errors: np.ndarray  # per intensity: errors among revealed bits (signal: the sample)
    sample_bits: int
    key: np.ndarray  # kept key bits (uint8 0/1)
    complete: bool = False  # the receiver's error counts are known
    key_counts: np.ndarray | None = None  # per intensity: bits that entered the key
    revealed: np.ndarray | None = None  # per intensity: bits revealed (errors' denominators)


def _counts(values: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(values, minlength=n)[:n].astype(np.int64)


class SiftSender:
    """Sender's core: answers sift requests from its PRF key; never sees receiver outcomes."""

    def __init__(self, prf_key: bytes, intensity_probabilities: list[float],
                 sample_fraction: float, rng: np.random.Generator,
                 key_rule: str = "signal") -> None:
        self.prf_key = prf_key
        self.intensity_probabilities = list(intensity_probabilities)
        self.sample_fraction = sample_fraction if key_rule == "signal" else 0.0
        self.key_rule = key_rule
        self.rng = rng
        self.records: dict[int, BatchRecord] = {}

    @property
    def intensities(self) -> int:
        return len(self.intensity_probabilities)

    def on_sift_request(self, request: m.SiftRequest) -> m.SiftReply:
        if len(request.slots) % 8 or len(request.slots) // 8 != len(request.bases):
            raise MalformedMessage(f"sift request {request.batch}: {len(request.slots)} slot "
                                   f"bytes for {len(request.bases)} bases")
        if request.batch in self.records:
            raise UnexpectedMessage(f"sift request for batch {request.batch} again")
        slots = np.frombuffer(request.slots, dtype="<u8")
        their_bases = np.frombuffer(request.bases, dtype=np.uint8)
        bits, bases, intensity = sender_choices(self.prf_key, slots, self.intensity_probabilities)
        match = bases == their_bases
        in_key, revealed = key_masks(self.key_rule, match, intensity, bases)
        key_bits = bits[in_key]
        sample = self.rng.random(len(key_bits)) < self.sample_fraction
        positions = np.flatnonzero(sample).astype("<u4")
        n = self.intensities
        self.records[request.batch] = BatchRecord(
            batch=request.batch, slot_end=request.slot_end,
            detections=_counts(intensity, n), matched=_counts(intensity[match], n),
            errors=np.zeros(n, dtype=np.int64), sample_bits=len(positions),
            key=key_bits[~sample], key_counts=_counts(intensity[in_key][~sample], n),
            revealed=_counts(intensity[revealed], n))
        return m.SiftReply(
            batch=request.batch,
            match=np.packbits(match).tobytes(),
            intensity=intensity.astype(np.uint8).tobytes(),
            sample_positions=positions.tobytes(),
            sample_bits=key_bits[sample].astype(np.uint8).tobytes(),
            revealed_bits=bits[revealed].astype(np.uint8).tobytes(),
        )

    def on_sample_result(self, result: m.SampleResult) -> BatchRecord:
        record = self.records.get(result.batch)
        if record is None or record.complete:
            raise UnexpectedMessage(f"sample result for batch {result.batch}, which has no "
                                    "open sift request")
        if result.sampled != record.sample_bits:
            raise MalformedMessage(f"batch {result.batch}: receiver sampled {result.sampled} "
                                   f"bits, we revealed {record.sample_bits}")
        if not 0 <= result.errors <= result.sampled:
            raise MalformedMessage(f"batch {result.batch}: {result.errors} errors in "
                                   f"{result.sampled} sampled bits")
        for index, errors in result.revealed_errors.items():
            if not 0 <= index < self.intensities or errors < 0:
                raise MalformedMessage(f"batch {result.batch}: {errors} errors at intensity "
                                       f"{index}")
            record.errors[index] = errors
        record.errors[SIGNAL] += result.errors
        record.complete = True
        return record


class SiftReceiver:
    """Receiver's core: turns detection records into sift requests and keeps its sifted key."""

    def __init__(self, intensities: int = 1, key_rule: str = "signal") -> None:
        self.n_intensities = intensities
        self.key_rule = key_rule
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
        if reply.batch not in self._pending:
            raise UnexpectedMessage(f"sift reply for batch {reply.batch}, never requested")
        bases, outcomes, slot_end = self._pending.pop(reply.batch)
        if len(reply.match) != (len(bases) + 7) // 8:
            raise MalformedMessage(f"batch {reply.batch}: {len(reply.match)} match bytes for "
                                   f"{len(bases)} detections")
        match = np.unpackbits(np.frombuffer(reply.match, dtype=np.uint8), count=len(bases))
        match = match.astype(bool)
        intensity = np.frombuffer(reply.intensity, dtype=np.uint8)
        n = self.n_intensities
        if len(intensity) != len(bases) or (len(intensity) and intensity.max() >= n):
            raise MalformedMessage(f"batch {reply.batch}: bad intensity announcement")
        in_key, revealed = key_masks(self.key_rule, match, intensity, bases)
        key_bits = outcomes[in_key]
        if len(reply.sample_positions) % 4:
            raise MalformedMessage(f"batch {reply.batch}: sample positions not 4-byte words")
        positions = np.frombuffer(reply.sample_positions, dtype="<u4")
        their_bits = np.frombuffer(reply.sample_bits, dtype=np.uint8)
        revealed_bits = np.frombuffer(reply.revealed_bits, dtype=np.uint8)
        if (len(their_bits) != len(positions) or len(np.unique(positions)) != len(positions)
                or (len(positions) and positions.max() >= len(key_bits))
                or len(revealed_bits) != np.count_nonzero(revealed)):
            raise MalformedMessage(f"batch {reply.batch}: sample or revealed bits do not fit "
                                   f"{len(key_bits)} sifted bits")
        sample_errors = int(np.count_nonzero(key_bits[positions] != their_bits))
        wrong = outcomes[revealed] != revealed_bits
        revealed_errors = _counts(intensity[revealed][wrong], n)
        errors = revealed_errors.copy()
        errors[SIGNAL] += sample_errors
        keep = np.ones(len(key_bits), dtype=bool)
        keep[positions] = False
        record = BatchRecord(
            batch=reply.batch, slot_end=slot_end, detections=_counts(intensity, n),
            matched=_counts(intensity[match], n), errors=errors, sample_bits=len(positions),
            key=key_bits[keep], complete=True,
            key_counts=_counts(intensity[in_key][keep], n),
            revealed=_counts(intensity[revealed], n))
        self.records[reply.batch] = record
        result = m.SampleResult(
            batch=reply.batch, errors=sample_errors, sampled=len(positions),
            revealed_errors={i: int(revealed_errors[i]) for i in range(n)
                             if revealed_errors[i]})
        return result, record
