"""Sans-I/O timing of one classical link direction: serialization, delay, jitter, loss.

Everything here takes the current time as an argument and returns release times, so the
relay's trio shell (``emulator.relay``) only sleeps and copies bytes, and the model is tested
without sockets. Times are wall seconds on one monotonic clock (``trio.current_time()`` in
the shell); configured quantities are emulated seconds and are stretched by ``1/time_scale``.

Model (per direction, FIFO, like one serial line followed by a fibre; netem's conventions):

    departure   = max(arrival, link_free)
    link_free   = departure + 8 n / rate            (serialization of an n-byte chunk)
    delivery    = link_free + delay + U(-jitter, +jitter), clipped to >= link_free

TCP streams additionally release chunks in order: ``release = max(delivery, previous
release)`` (``StreamOrder``), so jitter never reorders bytes; UDP datagrams may be reordered.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from dataclasses import dataclass, field

import numpy as np

from emulator.child_config import Direction

# Bounds of the adaptive timer lead: trio wakes at most ~1 ms late on Linux (epoll rounds
# its timeout up to whole milliseconds), so a lead beyond 2 ms would only mean a bad sample.
MAX_TIMER_LEAD_S = 0.002


def link_rng(seed: int, link: str, direction: str, purpose: str) -> np.random.Generator:
    """Independent, reproducible generator for one (link, direction, purpose) stream.

    The name is hashed with SHA-256 (Python's ``hash`` is salted per process) and fed with the
    run seed to ``numpy.random.SeedSequence``, so reruns with the same seed draw the same
    losses and jitters, and loss draws do not shift when jitter is switched on.
    """
    digest = hashlib.sha256(f"{link}\x00{direction}\x00{purpose}".encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, *words]))


class DirectionShaper:
    """Serialization, delay, jitter and loss of one link direction (shared by all its flows).

    ``time_scale`` maps emulated to wall seconds: a configured delay ``d`` takes ``d /
    time_scale`` wall seconds, and a rate of ``r`` emulated bit/s serializes ``n`` bytes in
    ``8 n / r / time_scale`` wall seconds.
    """

    def __init__(
        self,
        direction: Direction,
        time_scale: float,
        *,
        jitter_rng: np.random.Generator,
        loss_rng: np.random.Generator,
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, got {time_scale}")
        self.delay = direction.delay_s / time_scale
        # a time-varying delay (satellite pass): wall seconds after ``origin``, the trio time
        # of emulated 0 (the shell sets it), against wall delays
        self.schedule = None if direction.delay_schedule is None else tuple(
            np.asarray(column, dtype=np.float64) / time_scale
            for column in zip(*direction.delay_schedule, strict=True))
        self.origin = 0.0
        self.jitter = direction.jitter_s / time_scale
        self.loss = direction.loss
        self.wall_rate_bps = None if direction.rate_bps is None else direction.rate_bps * time_scale
        self.link_free = -np.inf
        self._jitter_rng = jitter_rng
        self._loss_rng = loss_rng

    def serialization(self, nbytes: int) -> float:
        """Wall seconds the link is busy sending ``nbytes`` (0 without a rate limit)."""
        return 0.0 if self.wall_rate_bps is None else 8.0 * nbytes / self.wall_rate_bps

    def transmit(self, now: float, nbytes: int) -> float:
        """Occupy the link with a chunk arriving at ``now``; return its delivery time."""
        departure = max(now, self.link_free)
        self.link_free = departure + self.serialization(nbytes)
        extra = self.delay_at(now)
        if self.jitter > 0:
            extra += self._jitter_rng.uniform(-self.jitter, self.jitter)
        return self.link_free + max(0.0, extra)

    def delay_at(self, now: float) -> float:
        """Wall delay of a chunk leaving at ``now``: fixed, or the schedule's, interpolated
        (held at its ends)."""
        if self.schedule is None:
            return self.delay
        return float(np.interp(now - self.origin, *self.schedule))

    def lost(self) -> bool:
        """Draw whether the next datagram is lost (Bernoulli with probability ``loss``)."""
        return self.loss > 0 and bool(self._loss_rng.random() < self.loss)


@dataclass
class StreamOrder:
    """Makes a TCP stream's release times monotone, so jitter keeps byte order."""

    last: float = -np.inf

    def release(self, delivery: float) -> float:
        self.last = max(self.last, delivery)
        return self.last


@dataclass
class DatagramQueue:
    """Datagrams waiting for their delivery time, earliest first (ties keep arrival order)."""

    _heap: list[tuple[float, int, bytes]] = field(default_factory=list)
    _counter: itertools.count = field(default_factory=itertools.count)
    pending_bytes: int = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, deadline: float, payload: bytes) -> bool:
        """Queue ``payload``; True when it became the earliest (the waiter must re-arm)."""
        seq = next(self._counter)
        heapq.heappush(self._heap, (deadline, seq, payload))
        self.pending_bytes += len(payload)
        return self._heap[0][1] == seq

    def next_deadline(self) -> float:
        return self._heap[0][0] if self._heap else np.inf

    def pop_due(self, now: float) -> list[bytes]:
        """Remove and return every payload whose deadline is at or before ``now``."""
        due: list[bytes] = []
        while self._heap and self._heap[0][0] <= now:
            payload = heapq.heappop(self._heap)[2]
            self.pending_bytes -= len(payload)
            due.append(payload)
        return due

    def clear(self) -> int:
        """Drop everything queued; return how many datagrams were dropped."""
        dropped = len(self._heap)
        self._heap.clear()
        self.pending_bytes = 0
        return dropped


def other(side: str) -> str:
    """The other side of a link: "b" for "a", "a" for "b"."""
    return "b" if side == "a" else "a"


def direction_of(sender: str) -> str:
    """Counter/shaper key of traffic sent by ``sender``: "ab" or "ba"."""
    return "ab" if sender == "a" else "ba"


@dataclass
class TimerLead:
    """How early to ask the timer for a deadline, so most wake-ups land just after it.

    trio's sleeps end late (epoll rounds its timeout up to whole milliseconds, plus loop and
    scheduling delays with a long tail under load). The shell sleeps until ``deadline -
    lead`` and reports the lateness ``woke - deadline``; the lead tracks the ``quantile`` of
    the oversleep ``lateness + lead`` by stochastic gradient on the pinball loss
    (``lead += step * (quantile - [oversleep < lead])``; Koenker, *Quantile Regression*, 2005).
    A quantile below one half keeps the median delivery at or after its deadline even when the
    tail grows; a mean would be dragged up by the tail and deliver most chunks early.
    Bounded to ``[0, MAX_TIMER_LEAD_S]``.
    """

    lead: float = 0.0
    quantile: float = 0.3
    step: float = 20e-6

    def start_from(self, late: list[float]) -> None:
        """Start the lead at the ``quantile`` of calibration oversleeps ``late`` (s), clamped."""
        ordered = sorted(late)
        self.lead = min(MAX_TIMER_LEAD_S, max(0.0, ordered[int(self.quantile * (len(ordered) - 1))]))

    def observe(self, lateness: float) -> None:
        below = 1.0 if lateness < 0 else 0.0  # the oversleep (lateness + lead) was below the lead
        self.lead = min(MAX_TIMER_LEAD_S, max(0.0, self.lead + self.step * (self.quantile - below)))


@dataclass
class Counters:
    """What the relay reports: bytes delivered per direction, chunks/datagrams, drops, and
    what it refused (``faults``: foreign datagrams, rejected connections, idle timeouts, ...)."""

    bytes_ab: int = 0
    bytes_ba: int = 0
    messages: int = 0
    dropped: int = 0
    connections: int = 0
    faults: dict[str, int] = field(default_factory=dict)

    def fault(self, kind: str) -> bool:
        """Count one fault of ``kind``; True the first time (so the shell logs it once)."""
        self.faults[kind] = self.faults.get(kind, 0) + 1
        return self.faults[kind] == 1

    def extra(self) -> dict[str, int]:
        """Counters beyond the four link columns, for ``RelayReport.counters``."""
        return {"connections": self.connections, **self.faults}

    def add(self, direction: str, nbytes: int) -> None:
        if direction == "ab":
            self.bytes_ab += nbytes
        else:
            self.bytes_ba += nbytes
        self.messages += 1
