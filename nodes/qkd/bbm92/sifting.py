"""BBM92 sifting as sans-I/O cores: the two messages per batch and what each end makes of them.

``b`` announces a batch of measured pairs (``Announcer``: when, which, and whether it is the
last), ``a`` answers from its own measurements (``Answerer``), and both compute the same
``Sifted`` view and ``BatchRecord`` (only the key bits differ). ``Announcer`` also knows when
sifting is over: the last batch announced and every announce answered. What the peer gets
wrong (lengths, settings, unknown batches) raises the ``RemoteProtocolError`` family.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import numpy as np

from nodes.errors import MalformedMessage, UnexpectedMessage
from nodes.qkd import messages as m
from nodes.qkd.sifting import BatchRecord

MISSING = 255  # setting/basis of a pair this end never measured


class Announce(msgspec.Struct, tag="bbm92_announce"):
    """b -> a: a batch of pairs b measured, its settings (0..3), a sample mask over them
    (packed bits, set only on Z/X settings) and b's outcomes where CHSH or sampled."""

    batch: int
    pairs: bytes  # uint64 LE pair ids
    settings: bytes  # uint8
    sample: bytes  # numpy.packbits of the mask
    outcomes: bytes  # uint8, b's bits where (setting >= 2) | sample, in order
    last: bool = False


class Answer(msgspec.Struct, tag="bbm92_answer"):
    """a -> b: a's basis per announced pair (0 = Z, 1 = X, 255 = never had it) and a's
    outcomes on the CHSH pairs and the sifted sample pairs, in order."""

    batch: int
    bases: bytes
    outcomes: bytes


class Done(msgspec.Struct, tag="bbm92_done"):
    """b -> a: every batch is post-processed; a may close."""

    batches: int


Message = Announce | Answer | Done | m.Message
decoder = msgspec.msgpack.Decoder(Message)


@dataclass(frozen=True)
class Sifted:
    """One batch after the answer, as both ends compute it from the two messages."""

    sifted: np.ndarray  # bool per pair: Z/Z or X/X
    sample: np.ndarray  # bool: sifted and in b's sample mask (disclosed, not key)
    chsh: np.ndarray  # bool: b in a CHSH setting and a has the pair
    a_bases: np.ndarray  # uint8
    settings: np.ndarray  # uint8

    @property
    def key(self) -> np.ndarray:
        return self.sifted & ~self.sample


def b_reveals(settings: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Positions where b discloses its outcome in ``Announce``."""
    return (settings >= 2) | mask


def sift(settings: np.ndarray, mask: np.ndarray, a_bases: np.ndarray) -> Sifted:
    a_has = a_bases != MISSING
    sifted = (settings < 2) & (a_bases == settings)
    return Sifted(sifted, sifted & mask, (settings >= 2) & a_has, a_bases, settings)


def a_reveals(s: Sifted) -> np.ndarray:
    """Positions where a discloses its outcome in ``Answer``."""
    return s.chsh | s.sample


def announce(batch: int, pairs: np.ndarray, settings: np.ndarray, bits: np.ndarray,
             mask: np.ndarray, last: bool) -> Announce:
    return Announce(batch, pairs.astype("<u8").tobytes(), settings.astype(np.uint8).tobytes(),
                    np.packbits(mask).tobytes(), bits[b_reveals(settings, mask)].tobytes(),
                    last)


def decode_announce(msg: Announce) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pairs, settings, mask, b's disclosed outcomes); raises ``MalformedMessage``."""
    if len(msg.pairs) % 8 or len(msg.sample) != (len(msg.pairs) // 8 + 7) // 8:
        raise MalformedMessage(f"batch {msg.batch}: announce of {len(msg.pairs)} pair bytes, "
                               f"{len(msg.sample)} mask bytes")
    pairs = np.frombuffer(msg.pairs, "<u8")
    settings = np.frombuffer(msg.settings, np.uint8)
    mask = np.unpackbits(np.frombuffer(msg.sample, np.uint8), count=len(pairs)).astype(bool)
    outcomes = np.frombuffer(msg.outcomes, np.uint8)
    if len(settings) != len(pairs) or len(outcomes) != int(b_reveals(settings, mask).sum()) \
            or (len(settings) and settings.max() > 3) or (mask & (settings >= 2)).any():
        raise MalformedMessage(f"batch {msg.batch}: announce lengths or settings disagree")
    return pairs, settings, mask, outcomes


def batch_record(batch: int, pairs_before: int, s: Sifted, a_bits_shown: np.ndarray,
                 b_bits_shown: np.ndarray, own_bits: np.ndarray) -> BatchRecord:
    """The post-processing record: identical at both ends except for ``key`` (own bits).

    ``a_bits_shown``/``b_bits_shown`` are both ends' outcomes at the sample positions; one
    'intensity'; ``slot_end`` counts pairs processed so far (monotone, as the cores need)."""
    n = len(s.settings)
    errors = int(np.count_nonzero(a_bits_shown != b_bits_shown))
    return BatchRecord(batch, pairs_before + n, np.array([n], np.int64),
                       np.array([int(s.sifted.sum())], np.int64), np.array([errors], np.int64),
                       int(s.sample.sum()), own_bits[s.key].astype(np.uint8), complete=True)


def _spread(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """An array over all pairs with ``values`` at ``where`` (zeros elsewhere)."""
    out = np.zeros(len(where), np.uint8)
    out[where] = values
    return out


class Answerer:
    """End ``a``: one ``Answer`` and one ``BatchRecord`` per ``Announce``, in order."""

    def __init__(self) -> None:
        self.answered = 0  # pairs announced so far
        self.last_seen = False

    def answer(self, msg: Announce, mine: dict[int, tuple[int, int]]) -> tuple[Answer,
                                                                                BatchRecord]:
        """Answer from ``mine`` (pair id -> (basis, bit)); the pairs used are removed."""
        if self.last_seen:
            raise UnexpectedMessage(f"announce {msg.batch} after the last one")
        pairs, settings, mask, b_shown = decode_announce(msg)
        self.last_seen = msg.last
        own = [mine.pop(int(k), (MISSING, 0)) for k in pairs]
        a_bases = np.array([s for s, _ in own], np.uint8)
        a_bits = np.array([b for _, b in own], np.uint8)
        s = sift(settings, mask, a_bases)
        b_bits = _spread(b_shown, b_reveals(settings, mask))
        record = batch_record(msg.batch, self.answered, s, a_bits[s.sample], b_bits[s.sample],
                              a_bits)
        self.answered += len(pairs)
        return Answer(msg.batch, a_bases.tobytes(), a_bits[a_reveals(s)].tobytes()), record


@dataclass
class Answered:
    """One batch at ``b`` once ``a`` answered: the sifted view and both ends' bits."""

    sifted: Sifted
    a_bits: np.ndarray  # a's bits where a revealed them (zeros elsewhere)
    b_bits: np.ndarray  # b's own bits


class Announcer:
    """End ``b``: announce what was measured, at most ``count`` pairs; ``answered_last`` once
    the last announce is answered (then sifting is over)."""

    def __init__(self, count: int, sample_fraction: float, rng: np.random.Generator) -> None:
        self.count, self.sample_fraction, self.rng = count, sample_fraction, rng
        self.announced = 0
        self.batch = 0
        self.sent_last = False
        self._pending: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def answered_last(self) -> bool:
        return self.sent_last and not self._pending

    def announce(self, measured: dict[int, tuple[int, int]], past_deadline: bool) -> Announce:
        """The next batch from ``measured`` (pair id -> (setting, bit); used pairs removed);
        the last one once ``count`` pairs are reached or the deadline has passed."""
        if self.sent_last:
            raise RuntimeError("the last batch was already announced")
        self.sent_last = self.announced + len(measured) >= self.count or past_deadline
        ids = sorted(measured)[: max(0, self.count - self.announced)]
        items = [measured.pop(k) for k in ids]
        settings = np.array([s for s, _ in items], np.uint8)
        bits = np.array([b for _, b in items], np.uint8)
        mask = (settings < 2) & (self.rng.random(len(ids)) < self.sample_fraction)
        self._pending[self.batch] = (settings, mask, bits)
        message = announce(self.batch, np.array(ids, np.uint64), settings, bits, mask,
                           self.sent_last)
        self.announced += len(ids)
        self.batch += 1
        return message

    def on_answer(self, msg: Answer) -> Answered:
        if msg.batch not in self._pending:
            raise UnexpectedMessage(f"answer for batch {msg.batch}, not announced or answered")
        settings, mask, b_bits = self._pending.pop(msg.batch)
        a_bases = np.frombuffer(msg.bases, np.uint8)
        if len(a_bases) != len(settings) or (a_bases[a_bases != MISSING] > 1).any():
            raise MalformedMessage(f"batch {msg.batch}: {len(a_bases)} bases for "
                                   f"{len(settings)} pairs, or a basis other than Z/X")
        s = sift(settings, mask, a_bases)
        shown = np.frombuffer(msg.outcomes, np.uint8)
        if len(shown) != int(a_reveals(s).sum()):
            raise MalformedMessage(f"batch {msg.batch}: {len(shown)} outcomes, "
                                   f"{int(a_reveals(s).sum())} due")
        return Answered(s, _spread(shown, a_reveals(s)), b_bits)
