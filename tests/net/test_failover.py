"""Routing + forwarding + stream cores together: a stream over two disjoint paths survives a
cut of the primary (and a crashed router), with no loss, no duplicates, and a longest gap
bounded by detection + convergence + the new path's delay."""

from __future__ import annotations

from dataclasses import dataclass, field

from netsim import NetSim, SimLink

from nodes.net.linkstate import RoutingConfig
from nodes.net.messages import RoutedFrame, StreamAck, StreamSegment, decode_stream, encode
from nodes.net.stream import StreamConfig, StreamReceiver, StreamSender

CFG = RoutingConfig(hello_interval=0.2, dead_interval=0.8, retransmit_interval=0.1)
STREAM = StreamConfig(window=64, min_rto=0.05)
DELAY = 0.005


def two_paths() -> dict[str, SimLink]:
    """a-p1-p2-b (primary, 3 km) and a-q1-q2-q3-b (backup, 4 km), 5 ms per link."""
    hops = [("a", "p1"), ("p1", "p2"), ("p2", "b"), ("a", "q1"), ("q1", "q2"), ("q2", "q3"),
            ("q3", "b")]
    return {f"{x}-{y}": SimLink(x, y, DELAY) for x, y in hops}


@dataclass
class StreamSource:
    """Writes ``count`` messages, one every ``interval`` from ``start``, to ``peer``."""

    peer: str
    count: int
    interval: float
    start: float
    sender: StreamSender = field(default_factory=lambda: StreamSender(1, STREAM))
    written: int = 0
    route: tuple[str, ...] = ()

    def on_frame(self, frame: RoutedFrame, now: float) -> None:
        ack = decode_stream(frame.payload)
        assert isinstance(ack, StreamAck)
        self.sender.receive_ack(ack, now)

    def on_routes(self, routes: dict, now: float) -> None:
        path = routes[self.peer].path if self.peer in routes else ()
        if path != self.route:
            self.route = path
            self.sender.reroute(now)

    def poll(self, now: float) -> list[tuple[str, str, bytes]]:
        while self.written < self.count and self.start + self.written * self.interval <= now:
            self.sender.send(self.written.to_bytes(4, "big"))
            self.written += 1
        self.sender.handle_timer(now)
        return [(self.peer, "stream", encode(s)) for s in self.sender.segments_to_send(now)]

    def next_deadline(self) -> float | None:
        times = [t for t in (self.sender.next_deadline(),) if t is not None]
        if self.written < self.count:
            times.append(self.start + self.written * self.interval)
        return min(times, default=None)


@dataclass
class StreamSink:
    peer: str
    receiver: StreamReceiver = field(default_factory=lambda: StreamReceiver(1, STREAM))
    acks: list[StreamAck] = field(default_factory=list)
    got: list[bytes] = field(default_factory=list)
    at: list[float] = field(default_factory=list)

    def on_frame(self, frame: RoutedFrame, now: float) -> None:
        seg = decode_stream(frame.payload)
        assert isinstance(seg, StreamSegment)
        self.acks.append(self.receiver.receive_segment(seg))
        taken = self.receiver.take()
        self.got += taken
        self.at += [now] * len(taken)

    def on_routes(self, routes: dict, now: float) -> None:
        pass

    def poll(self, now: float) -> list[tuple[str, str, bytes]]:
        out = [(self.peer, "stream", encode(a)) for a in self.acks]
        self.acks.clear()
        return out

    def next_deadline(self) -> float | None:
        return None


def run_stream(sim: NetSim, source: StreamSource, sink: StreamSink, t_end: float) -> dict:
    sim.run_until(t_end)
    gaps = [(b - a, a) for a, b in zip(sink.at, sink.at[1:], strict=False)]
    gap, gap_start = max(gaps)
    return {"sent": source.count, "delivered": len(sink.got),
            "in_order": sink.got == [i.to_bytes(4, "big") for i in range(len(sink.got))],
            "duplicates_suppressed": sink.receiver.stats["duplicates"],
            "max_gap_s": gap, "gap_start": gap_start, **source.sender.stats}


def _setup() -> tuple[NetSim, StreamSource, StreamSink]:
    sim = NetSim.build(CFG, two_paths())
    source, sink = StreamSource("b", 3000, 0.002, start=1.0), StreamSink("a")
    sim.endpoints.update(a=source, b=sink)
    sim.run_until_converged(1.0)
    assert sim.routers["a"].routes["b"].path == ("a", "p1", "p2", "b")
    return sim, source, sink


def test_stream_survives_a_cut_of_the_primary_and_its_restore():
    sim, source, sink = _setup()
    sim.run_until(3.0)
    sim.cut("p1-p2")
    detected = sim.run_until_down(3.0, 3.0 + CFG.dead_interval + 0.05)
    converged = sim.run_until_converged(detected + 1.0, step=0.001)
    assert sim.routers["a"].routes["b"].path == ("a", "q1", "q2", "q3", "b")
    sim.run_until(5.0)
    sim.restore("p1-p2")
    report = run_stream(sim, source, sink, 12.0)
    print(report, "detection", detected - 3.0, "convergence", converged - detected)
    assert report["delivered"] == report["sent"] == 3000 and report["in_order"]
    assert sim.routers["a"].routes["b"].path == ("a", "p1", "p2", "b")  # back on the primary
    assert source.sender.stats["reroutes"] >= 2
    detection, convergence = detected - 3.0, converged - detected
    assert detection <= CFG.dead_interval + DELAY
    assert convergence < 0.05
    # The outage: from the last message over the old path to the first over the new one.
    assert 3.0 <= report["gap_start"] < 3.0 + 0.05
    assert report["max_gap_s"] <= detection + convergence + 5 * DELAY + 0.01


def test_stream_survives_a_crashed_router_that_restarts_and_rejoins():
    sim, source, sink = _setup()
    sim.run_until(2.5)
    sim.stop_router("p2")
    sim.run_until(3.5)
    assert sim.routers["a"].routes["b"].path[1] == "q1"
    sim.start_router("p2", 4.0)
    sim.run_until_converged(6.0)
    assert sim.routers["a"].routes["b"].path == ("a", "p1", "p2", "b")
    report = run_stream(sim, source, sink, 12.0)
    assert report["delivered"] == 3000 and report["in_order"]
    assert report["max_gap_s"] <= CFG.dead_interval + 0.1
