"""Two stream cores wired through an in-memory path that drops, duplicates, reorders and
reroutes (changes delay, with a blackout while the routes converge), on a virtual clock."""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from nodes.net.messages import decode_stream, encode
from nodes.net.stream import StreamConfig, StreamReceiver, StreamSender


@dataclass
class Path:
    delay: float = 0.010
    jitter: float = 0.0  # uniform extra delay: reorders
    drop: float = 0.0
    duplicate: float = 0.0
    reroute_at: float | None = None  # from then on ``new_delay``
    new_delay: float = 0.040
    blackout: tuple[float, float] | None = None  # everything sent in [start, end) is lost

    def arrivals(self, now: float, rng: random.Random) -> list[float]:
        if self.blackout and self.blackout[0] <= now < self.blackout[1]:
            return []
        if rng.random() < self.drop:
            return []
        base = self.new_delay if self.reroute_at is not None and now >= self.reroute_at \
            else self.delay
        copies = 2 if rng.random() < self.duplicate else 1
        return [now + base + rng.uniform(0, self.jitter) for _ in range(copies)]


@dataclass
class StreamRun:
    forward: Path
    backward: Path
    config: StreamConfig = field(default_factory=StreamConfig)
    seed: int = 1
    sender: StreamSender = field(init=False)
    receiver: StreamReceiver = field(init=False)
    delivered: list[bytes] = field(default_factory=list)
    delivered_at: list[float] = field(default_factory=list)
    take_every: float | None = None  # the receiving app drains only this often (None: at once)

    def __post_init__(self) -> None:
        self.sender = StreamSender(5, self.config)
        self.receiver = StreamReceiver(5, self.config)
        self._rng = random.Random(self.seed)
        self._events: list = []
        self._order = itertools.count()
        self._timer: float | None = None

    def _push(self, t: float, kind: str, data: bytes = b"") -> None:
        heapq.heappush(self._events, (t, next(self._order), kind, data))

    def run(self, messages: int, interval: float, t_limit: float,
            max_events: int = 1_000_000) -> dict:
        for i in range(messages):
            self._push(i * interval, "write", i.to_bytes(4, "big"))
        if self.take_every:
            self._push(self.take_every, "take")
        now = 0.0
        for _ in range(max_events):
            if not self._events or (self.sender.idle and len(self.delivered) == messages
                                    and not self.receiver._ready):
                break
            now, _, kind, data = heapq.heappop(self._events)
            if now > t_limit:
                break
            if kind == "write":
                self.sender.send(data)
            elif kind == "timer":
                if self._timer != now:
                    continue
                self._timer = None
                self.sender.handle_timer(now)
            elif kind == "take":
                self._take(now)
                self._push(now + self.take_every, "take")
            elif kind == "seg":
                ack = self.receiver.receive_segment(decode_stream(data), now)
                if not self.take_every:
                    self._take(now)
                for t in self.backward.arrivals(now, self._rng):
                    self._push(t, "ack", encode(ack))
            else:
                self.sender.receive_ack(decode_stream(data), now)
            for seg in self.sender.segments_to_send(now):
                for t in self.forward.arrivals(now, self._rng):
                    self._push(t, "seg", encode(seg))
            deadline = self.sender.next_deadline()
            if deadline is not None and deadline != self._timer:
                self._timer = deadline
                self._push(max(deadline, now), "timer")
        return self.report(messages, now)

    def _take(self, now: float) -> None:
        got = self.receiver.take()
        self.delivered += got
        self.delivered_at += [now] * len(got)
        update = self.receiver.window_update()
        if update is not None:
            for t in self.backward.arrivals(now, self._rng):
                self._push(t, "ack", encode(update))

    def report(self, messages: int, now: float) -> dict:
        gaps = [b - a for a, b in itertools.pairwise(self.delivered_at)]
        in_order = self.delivered == [i.to_bytes(4, "big") for i in range(len(self.delivered))]
        return {"sent": messages, "delivered": len(self.delivered), "in_order": in_order,
                "duplicates_delivered": len(self.delivered) - len(set(self.delivered)),
                "duplicates_suppressed": self.receiver.stats["duplicates"],
                "out_of_order_arrivals": self.receiver.stats["out_of_order"],
                "max_gap_s": max(gaps, default=0.0), "core_max_gap_s": self.receiver.max_gap,
                "finished_at": now,
                **{f"sender_{k}": v for k, v in self.sender.stats.items()}}
