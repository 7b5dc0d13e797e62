"""Reliable ordered message stream (sans-I/O): sender and receiver halves of one stream.

Per-message sequence numbers, cumulative + selective acks (``StreamAck``), retransmission on
an RFC 6298 timer (SRTT/RTTVAR, Karn's rule, exponential backoff) and on SACK evidence
(``dupthresh`` later messages acked), a flow-control window, duplicate suppression and
in-order delivery. It survives a path change: nothing is given up, so a reroute costs only
delay. No congestion control: the window is fixed (emulated links, not the Internet).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from nodes.errors import UnexpectedMessage
from nodes.net.messages import MAX_SACK_BLOCKS, StreamAck, StreamSegment


@dataclass(frozen=True)
class StreamConfig:
    """Window (messages) and RFC 6298 timer bounds (seconds)."""

    window: int = 64
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 60.0
    granularity: float = 0.001
    dupthresh: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.window <= 2**20 or self.dupthresh < 1:
            raise ValueError("window must be in 1..2**20 and dupthresh >= 1")
        if not 0 < self.min_rto <= self.initial_rto <= self.max_rto:
            raise ValueError("need 0 < min_rto <= initial_rto <= max_rto")


@dataclass
class _InFlight:
    data: bytes
    sent_at: float
    transmissions: int = 1
    sacked: bool = False
    fast_retransmitted: bool = False


class StreamSender:
    """Sending half: ``send`` queues, ``segments_to_send(now)`` emits, acks and timers drive."""

    def __init__(self, stream: int, config: StreamConfig | None = None) -> None:
        self.stream = stream
        self.config = config = config or StreamConfig()
        self.rto = config.initial_rto
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.stats = {"sent": 0, "transmissions": 0, "retransmitted": 0, "timeouts": 0,
                      "fast_retransmits": 0, "window_probes": 0, "reroutes": 0, "acked": 0}
        self._queue: deque[bytes] = deque()  # written, never sent; seqs from _next_new on
        self._flight: dict[int, _InFlight] = {}  # sent, not cumulatively acked: [_una, _next_new)
        self._retx: set[int] = set()
        self._una = 0
        self._next_new = 0
        self._peer_window = config.window
        self._timer: float | None = None
        self._probe = False

    @property
    def idle(self) -> bool:
        """Everything written has been acknowledged."""
        return not self._queue and not self._flight

    def send(self, data: bytes) -> int:
        """Queue one message; returns its sequence number."""
        self._queue.append(bytes(data))
        self.stats["sent"] += 1
        return self._next_new + len(self._queue) - 1

    def segments_to_send(self, now: float) -> list[StreamSegment]:
        """Retransmissions first, then new messages that fit the window."""
        out = []
        for seq in sorted(self._retx):
            seg = self._flight[seq]
            seg.transmissions += 1
            seg.sent_at = now
            self.stats["retransmitted"] += 1
            out.append(StreamSegment(self.stream, seq, seg.data))
        self._retx.clear()
        limit = self._una + min(self.config.window, self._peer_window)
        while self._queue and (self._next_new < limit or self._probe):
            self._probe = False
            data = self._queue.popleft()
            self._flight[self._next_new] = _InFlight(data, now)
            out.append(StreamSegment(self.stream, self._next_new, data))
            self._next_new += 1
        self.stats["transmissions"] += len(out)
        if self._timer is None and (self._flight or self._queue):
            self._timer = now + self.rto
        return out

    def receive_ack(self, ack: StreamAck, now: float) -> None:
        """Apply an ack; an ack of messages never sent is the peer's fault (``UnexpectedMessage``)."""
        if ack.stream != self.stream:
            raise UnexpectedMessage(f"ack for stream {ack.stream} on stream {self.stream}")
        if ack.cum > self._next_new or any(not s < e <= self._next_new for s, e in ack.sack):
            raise UnexpectedMessage(f"ack beyond what was sent ({self._next_new}): {ack}")
        sample: float | None = None
        if ack.cum > self._una:
            for seq in range(self._una, ack.cum):
                seg = self._flight.pop(seq)
                self._retx.discard(seq)
                if seg.transmissions == 1 and not seg.sacked:
                    sample = now - seg.sent_at
            self.stats["acked"] += ack.cum - self._una
            self._una = ack.cum
            self._timer = now + self.rto if self._flight else None
        for start, end in ack.sack:
            for seq in range(max(start, self._una), end):
                seg = self._flight[seq]
                if not seg.sacked:
                    seg.sacked = True
                    self._retx.discard(seq)
                    if seg.transmissions == 1:
                        sample = now - seg.sent_at
        if sample is not None:
            self._rtt_sample(sample)
        self._peer_window = ack.window
        self._fast_retransmit()
        if self._timer is None and self._queue:
            self._timer = now + self.rto  # persist timer: probe a closed window

    def next_deadline(self) -> float | None:
        return self._timer

    def handle_timer(self, now: float) -> None:
        """On RTO expiry: back off, and resend every unacknowledged message (or probe)."""
        if self._timer is None or now < self._timer:
            return
        self.rto = min(2 * self.rto, self.config.max_rto)
        if self._flight:
            self.stats["timeouts"] += 1
            self._retx.update(s for s, seg in self._flight.items() if not seg.sacked)
        elif self._queue:
            self.stats["window_probes"] += 1
            self._probe = True
        self._timer = now + self.rto

    def reroute(self, now: float) -> None:
        """The route to the peer changed: what was in flight on the old path is presumed lost,
        so resend it now with the backoff undone (instead of waiting out a backed-off RTO)."""
        c = self.config
        if self.srtt is not None and self.rttvar is not None:
            self.rto = min(max(self.srtt + max(c.granularity, 4 * self.rttvar), c.min_rto),
                           c.max_rto)
        self._retx.update(s for s, seg in self._flight.items() if not seg.sacked)
        self.stats["reroutes"] += 1
        if self._flight or self._queue:
            self._timer = now + self.rto

    def _rtt_sample(self, r: float) -> None:
        """RFC 6298 section 2: first sample, then alpha = 1/8, beta = 1/4."""
        c = self.config
        if self.srtt is None or self.rttvar is None:
            self.srtt, self.rttvar = r, r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        self.rto = min(max(self.srtt + max(c.granularity, 4 * self.rttvar), c.min_rto), c.max_rto)

    def _fast_retransmit(self) -> None:
        later_sacked = 0
        for seq in sorted(self._flight, reverse=True):
            seg = self._flight[seq]
            if seg.sacked:
                later_sacked += 1
            elif later_sacked >= self.config.dupthresh and not seg.fast_retransmitted:
                seg.fast_retransmitted = True
                self._retx.add(seq)
                self.stats["fast_retransmits"] += 1


@dataclass
class StreamReceiver:
    """Receiving half: ``receive_segment`` returns the ack to send; ``take`` drains messages."""

    stream: int
    config: StreamConfig = field(default_factory=StreamConfig)
    stats: dict[str, int] = field(default_factory=lambda: {
        "received": 0, "delivered": 0, "duplicates": 0, "out_of_order": 0, "beyond_window": 0})
    _cum: int = 0
    _buffer: dict[int, bytes] = field(default_factory=dict)
    _ready: deque[bytes] = field(default_factory=deque)
    _advertised: int = -1  # the window of the last ack returned
    max_gap: float = 0.0  # longest time between two in-order deliveries (needs ``now``)
    _last_delivery: float | None = None

    def receive_segment(self, seg: StreamSegment, now: float | None = None) -> StreamAck:
        """Buffer or deliver one segment; duplicates and segments past the window (which counts
        delivered messages the app has not taken yet) are dropped."""
        if seg.stream != self.stream:
            raise UnexpectedMessage(f"segment for stream {seg.stream} on stream {self.stream}")
        s = self.stats
        s["received"] += 1
        if seg.seq < self._cum or seg.seq in self._buffer:
            s["duplicates"] += 1
        elif seg.seq >= self._cum + self.config.window - len(self._ready):
            s["beyond_window"] += 1
        else:
            if seg.seq > self._cum:
                s["out_of_order"] += 1
            self._buffer[seg.seq] = seg.data
            if self._cum in self._buffer and now is not None:
                if self._last_delivery is not None:
                    self.max_gap = max(self.max_gap, now - self._last_delivery)
                self._last_delivery = now
            while self._cum in self._buffer:
                self._ready.append(self._buffer.pop(self._cum))
                self._cum += 1
                s["delivered"] += 1
        return self.ack()

    def ack(self) -> StreamAck:
        """The current cumulative ack, the lowest SACK ranges, and the free window."""
        ranges: list[tuple[int, int]] = []
        for seq in sorted(self._buffer):
            if ranges and ranges[-1][1] == seq:
                ranges[-1] = (ranges[-1][0], seq + 1)
            elif len(ranges) == MAX_SACK_BLOCKS:
                break
            else:
                ranges.append((seq, seq + 1))
        self._advertised = self._free()
        return StreamAck(self.stream, self._cum, self._advertised, tuple(ranges))

    def _free(self) -> int:
        return max(0, self.config.window - len(self._buffer) - len(self._ready))

    def take(self) -> list[bytes]:
        """Every message delivered in order since the last call (this frees window)."""
        out = list(self._ready)
        self._ready.clear()
        return out

    def window_update(self) -> StreamAck | None:
        """An ack to send unprompted when ``take`` reopened a window advertised as less than
        half open (so the sender need not wait for its persist timer); else None."""
        half = (self.config.window + 1) // 2
        if 0 <= self._advertised < half <= self._free():
            return self.ack()
        return None
