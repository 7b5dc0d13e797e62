"""Hostile and careless peers: hello timeout, cap on unauthenticated connections, small frames
before the hello, deep nesting, non-finite numbers, forgotten connections, own statistics only,
taps, and a tiny frame_ms that the daemon catches up with instead of stalling."""

from __future__ import annotations

import math
import time
from itertools import pairwise

import msgspec
import numpy as np
import pytest
import trio

from emulator.child_config import DaemonConfig, DaemonEntanglementLink, DaemonLink
from emulator.daemon import protocol as p
from emulator.daemon.server import serve
from emulator.daemon.session import SessionLimits
from emulator.daemon.taps import Tap
from emulator.physics.channels import transmittance
from emulator.physics.detectors import background_yield, gain
from emulator.scenario import LinkEntanglement, NodeMemory, QuantumLink, Source
from emulator.wire import HEADER, frame
from tests.daemon.test_server import KEY, TOKENS, Peer, detections_for


def make_config(frame_ms: float = 10.0, rate_hz: float = 1e8) -> DaemonConfig:
    quantum = QuantumLink(source=Source(rate_hz=rate_hz, mu=0.5), frame_ms=frame_ms)
    link = DaemonLink("alice-bob", "alice", "bob", 25.0, quantum)
    ent = DaemonEntanglementLink("ab", "alice", "bob", 1.0,
                                 LinkEntanglement(attempt_rate_hz=1e4, source_fidelity=0.9))
    memory = NodeMemory(slots=16)
    return DaemonConfig("test", time.time(), 1.0, 42, dict(TOKENS), [link],
                        memories={"alice": memory, "bob": memory},
                        entanglement_links=[ent])


async def pulse(alice: Peer, bob: Peer, seconds: float) -> tuple[p.SourceStopped, list]:
    """Run the source ``seconds`` while bob reads; (alice's SourceStopped, bob's Detections)."""
    await bob.ask(p.DetectorOpen(1, "alice-bob"))
    await alice.ask(p.SourceStart(2, "alice-bob", KEY))
    return await detections_for(alice, bob, "alice-bob", seconds)


async def test_silent_connection_is_closed_after_the_hello_timeout(nursery):
    daemon = await nursery.start(serve, make_config(), SessionLimits(hello_timeout_s=0.2))
    silent = await Peer.connect(daemon.port)
    t = time.monotonic()
    error = await silent.receive()
    assert isinstance(error, p.Error) and error.code == "unauthenticated" and error.fatal
    assert 0.15 < time.monotonic() - t < 2.0
    assert await silent.receive() is None
    assert daemon.sessions.counters["rejected_unauthenticated"] == 1


async def test_unauthenticated_connections_are_capped(nursery):
    daemon = await nursery.start(serve, make_config(), SessionLimits(max_unauthenticated=3))
    waiting = [await Peer.connect(daemon.port) for _ in range(3)]
    with trio.fail_after(5):
        while daemon.sessions.unauthenticated < 3:
            await trio.sleep(0.01)
    excess = await Peer.connect(daemon.port)
    assert await excess.receive() is None  # closed at once, nothing read
    assert daemon.sessions.counters["rejected_too_many"] == 1
    # authenticating one of the waiting frees a place for a newcomer
    assert isinstance(await waiting[0].ask(p.Hello(p.PROTOCOL_VERSION, "eve", "tok-eve")),
                      p.Welcome)
    assert isinstance(await (await Peer.connect(daemon.port, "alice")).ask(p.StatsRequest(1)),
                      p.Stats)
    assert daemon.report().rejected_connections == 1


async def test_frame_limit_is_small_until_the_hello(nursery):
    daemon = await nursery.start(serve, make_config())
    limit = daemon.sessions.limits.unauthenticated_max_frame
    early = await Peer.connect(daemon.port)
    await early.framed.stream.send_all(HEADER.pack(limit + 1))
    error = await early.receive()
    assert error.code == "too_large" and error.fatal
    # the same size is fine after the hello (an unknown request type: bad_frame, not too_large)
    late = await Peer.connect(daemon.port, "alice")
    await late.framed.send(msgspec.msgpack.encode({"type": "x", "pad": b"\0" * (limit + 1)}))
    assert (await late.receive()).code == "bad_frame"


@pytest.mark.parametrize("payload", [
    b"\x82\xa1x" + b"\x91" * 200_000 + b"\x00" + b"\xa4type\xa5stats",  # deep, before the tag
    b"\x91" * 1_000_000 + b"\x00",
])
async def test_deep_nesting_is_a_bad_frame_not_a_crash(nursery, payload):
    daemon = await nursery.start(serve, make_config())
    witness = await Peer.connect(daemon.port, "eve")
    bad = await Peer.connect(daemon.port, "alice")
    await bad.framed.stream.send_all(frame(payload))
    error = await bad.receive()
    assert error.code == "bad_frame" and error.fatal
    assert isinstance(await witness.ask(p.StatsRequest(1)), p.Stats)
    assert daemon.sessions.counters["rejected_bad_frame"] == 1


NON_FINITE = [
    ("alice", p.QubitGate(1, "RX", [p.QubitRef("alice", 0)], angle=math.nan)),
    ("alice", p.QubitGate(2, "ROT", [p.QubitRef("alice", 0)], axis=(math.inf, 0.0, 1.0))),
    ("alice", p.QubitPrepare(3, theta=math.inf)),
    ("alice", p.QubitPrepare(4, phi=-math.inf)),
    ("bob", p.PairAwait(5, "ab", timeout_s=math.inf)),
    ("alice", p.SourceStart(6, "alice-bob", KEY, [math.nan], [1.0])),
    ("alice", p.SourceStart(7, "alice-bob", KEY, [0.5], [math.inf])),
]


@pytest.mark.parametrize("node,request_", NON_FINITE)
async def test_non_finite_numbers_are_refused(nursery, node, request_):
    daemon = await nursery.start(serve, make_config())
    peer = await Peer.connect(daemon.port, node)
    error = await peer.ask(request_)
    assert isinstance(error, p.Error) and error.code == "bad_request" and not error.fatal
    assert error.id == request_.id
    assert isinstance(await peer.ask(p.StatsRequest(9)), p.Stats)  # still served


async def test_closed_connections_are_forgotten(nursery):
    daemon = await nursery.start(serve, make_config())
    keep = await Peer.connect(daemon.port, "eve")
    for i in range(50):
        peer = await Peer.connect(daemon.port, "alice" if i % 2 else None)
        await peer.framed.aclose()
    with trio.fail_after(5):
        while len(daemon.sessions.open) > 1 or daemon.sessions.unauthenticated:
            await trio.sleep(0.01)
    assert isinstance(await keep.ask(p.StatsRequest(1)), p.Stats)
    assert daemon.sessions.counters["connections"] == 51


class Recorder(Tap):
    def __init__(self) -> None:
        self.frames: list[tuple[int, int, int]] = []
        self.emitted: list[int] = []
        self.heralded: list[tuple[int, str]] = []

    def photon_frame(self, link, slot_start, slot_end, detections, t_due):
        self.frames.append((slot_start, slot_end, detections.slot.size))

    def pair_emitted(self, link, pair, ends, t_emit):
        self.emitted.append(pair)

    def pair_heralded(self, link, pair, node, t_herald):
        self.heralded.append((pair, node))


async def test_a_registered_tap_sees_frames_and_pairs_and_by_default_none_is(nursery):
    daemon = await nursery.start(serve, make_config())
    assert not daemon.taps
    tap = Recorder()
    daemon.taps.add(tap)
    alice, bob = await Peer.connect(daemon.port, "alice"), await Peer.connect(daemon.port, "bob")
    stopped, messages = await pulse(alice, bob, 0.05)
    sent = sum(len(m.outcome) for m in messages)
    assert tap.frames[0][0] == 0 and tap.frames[-1][1] == stopped.pulses
    assert all(a[1] == b[0] for a, b in pairwise(tap.frames))
    assert sum(n for _, _, n in tap.frames) == sent  # what the receiver got, no more
    assert isinstance(await bob.ask(p.EntangleStart(4, "ab", max_pending=2)), p.EntangleStarted)
    delivered = await bob.ask(p.PairAwait(5, "ab", max=1))
    (pair,) = delivered.pairs
    assert pair.pair in tap.emitted and (pair.pair, "bob") in tap.heralded
    daemon.taps.remove(tap)
    assert not daemon.taps


async def test_nodes_see_only_their_own_numbers(nursery):
    daemon = await nursery.start(serve, make_config())
    alice, bob = await Peer.connect(daemon.port, "alice"), await Peer.connect(daemon.port, "bob")
    eve = await Peer.connect(daemon.port, "eve")
    await pulse(alice, bob, 0.05)
    assert (await bob.ask(p.StatsRequest(4))).pulses > 0
    theirs = await eve.ask(p.StatsRequest(5))
    assert (theirs.pulses, theirs.detections, theirs.frames) == (0, 0, 0)
    await alice.ask(p.EntangleStart(6, "ab", max_pending=1))
    (pair,) = (await alice.ask(p.PairAwait(7, "ab", max=1))).pairs
    await alice.ask(p.QubitMeasure(8, [p.QubitRef("alice", pair.slot)], ["Z"]))
    mine = await alice.ask(p.MemoryStatsRequest(9))
    assert mine.measurements == {"alice": 1} and set(mine.free_slots) == {"alice"}
    assert set(mine.pairs_generated) == {"ab"}
    other = await eve.ask(p.MemoryStatsRequest(10))
    assert other.measurements == {} and other.pairs_generated == {} and other.free_slots == {}
    assert daemon.report().measurements == {"alice": 1}  # the emulator's own report: all


async def test_tiny_frames_are_coalesced_when_behind_not_stalled(nursery):
    """frame_ms = 0.001 at 100 MHz is 10^6 frames a second: far more than one core handles one
    by one. The daemon samples every due frame at once: it keeps up with the clock (lag stays
    small), the stream stays contiguous and the gain matches the formula."""
    config = make_config(frame_ms=0.001)
    daemon = await nursery.start(serve, config)
    alice, bob = await Peer.connect(daemon.port, "alice"), await Peer.connect(daemon.port, "bob")
    assert daemon.photon_links["alice-bob"].slots_per_frame == 100
    stopped, messages = await pulse(alice, bob, 0.5)
    stats = await bob.ask(p.StatsRequest(4))
    pulses = stopped.pulses
    assert 0.4e8 < pulses < 1e8
    assert messages[0].frame_start == 0 and messages[-1].frame_end == pulses
    assert all(a.frame_end == b.frame_start for a, b in pairwise(messages))
    assert len(messages) < pulses / 100 / 20  # far fewer than one per 100-slot frame
    assert stats.lag_recent_s < 0.25
    link = config.links[0].quantum
    eta = float(transmittance(25.0, 0.2)) * link.detector.efficiency
    q = float(gain(0.5, eta, background_yield(link.detector.dark_count_probability)))
    clicks = sum(len(m.outcome) for m in messages)
    assert abs(clicks - pulses * q) < 4 * np.sqrt(pulses * q * (1 - q))
    assert daemon.photon_links["alice-bob"].coalesced > 0
