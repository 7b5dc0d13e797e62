"""The wire shaper's frame handling without TAPs (pipes stand in for them; no root needed)."""

from __future__ import annotations

import os

import pytest

from emulator.child_config import Direction
from emulator.netns.shaper import BACKLOG_S, CORRUPT_MIN_BYTES, Wire, WireConfig, WireEnd
from emulator.telemetry import LinkControl


def make_wire(direction: Direction = Direction(), time_scale: float = 1.0) -> Wire:
    end = {"netns": "/proc/self/ns/net", "ifname": "q-x", "addr4": "10.0.0.1/24",
           "addr6": "fd00::1/64"}
    return Wire(WireConfig(run_id="r", t0=0.0, time_scale=time_scale, seed=1, name="a-b",
                           a=WireEnd(node="a", **end), b=WireEnd(node="b", **end),
                           a_to_b=direction, b_to_a=direction))


@pytest.fixture
def piped():
    """A wire whose ends are pipes: frames it delivers towards b are read from ``out_b``."""
    wire = make_wire(Direction(delay_s=0.010))
    out_a, in_a = os.pipe()
    out_b, in_b = os.pipe()
    wire.fds = {"a": in_a, "b": in_b}
    seen = []
    wire.hooks.append(lambda key, t, frame, delivered: seen.append((key, frame, delivered)))
    yield wire, out_b, seen
    wire.close()
    os.close(out_a)
    os.close(out_b)


def test_frames_wait_their_delay_then_go_out_in_order(piped):
    wire, out_b, seen = piped
    for i in range(3):
        wire.arrive("ab", 100.0 + i * 0.001, bytes([i]) * 60)
    queue = wire.queues["ab"]
    assert queue.next_deadline() == pytest.approx(100.010, abs=1e-5)
    wire._deliver("ab", queue.pop_due(100.0105))
    assert os.read(out_b, 1000) == bytes([0]) * 60
    wire._deliver("ab", queue.pop_due(100.013))
    assert os.read(out_b, 1000) == bytes([1]) * 60 + bytes([2]) * 60
    assert (wire.counters.bytes_ab, wire.counters.messages, wire.counters.dropped) == (180, 3, 0)
    assert [d for _, _, d in seen] == [True] * 3


def test_cut_drops_every_frame_and_restore_lets_them_through(piped):
    wire, _, seen = piped
    assert wire.apply(LinkControl(action="cut", plane="classical")) is not None
    wire.arrive("ab", 1.0, b"x" * 100)
    wire.arrive("ba", 1.0, b"y" * 100)
    assert wire.counters.faults["cut_frames"] == 2 and wire.counters.dropped == 2
    assert seen == [("ab", b"x" * 100, False), ("ba", b"y" * 100, False)]
    wire.apply(LinkControl(action="restore"))
    wire.arrive("ab", 2.0, b"z" * 100)
    assert len(wire.queues["ab"]) == 1


def test_a_quantum_plane_fault_is_not_the_wires():
    wire = make_wire()
    assert wire.apply(LinkControl(action="cut", plane="quantum")) is None
    assert not wire.is_cut
    wire.close()


def test_degrade_adds_loss_on_every_frame_and_zero_clears_it():
    wire = make_wire()
    wire.apply(LinkControl(action="degrade", loss=1.0))
    for i in range(50):
        wire.arrive("ab", float(i), b"f" * 80)
    assert wire.counters.faults["lost_frames"] == 50
    wire.apply(LinkControl(action="degrade", loss=0.0))
    wire.arrive("ab", 99.0, b"f" * 80)
    assert len(wire.queues["ab"]) == 1
    wire.close()


def test_configured_loss_is_binomial():
    n, p = 20000, 0.02
    wire = make_wire(Direction(loss=p))
    for i in range(n):
        wire.arrive("ab", i * 1e-3, b"f" * 64)
    lost = wire.counters.faults["lost_frames"]
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(lost - n * p) < 5 * sd, lost
    wire.close()


def test_corrupt_flips_one_bit_of_the_next_large_frame_only():
    wire = make_wire()
    wire.apply(LinkControl(action="corrupt"))
    small, large = b"\x00" * 200, b"\x00" * CORRUPT_MIN_BYTES
    wire.arrive("ab", 0.0, small)
    wire.arrive("ab", 0.0, large)
    wire.arrive("ab", 0.0, large)
    frames = wire.queues["ab"].pop_due(10.0)
    assert frames[0] == small and frames[2] == large
    diff = [i for i, (x, y) in enumerate(zip(frames[1], large)) if x != y]
    assert diff == [CORRUPT_MIN_BYTES // 2] and wire.counters.faults["corrupted"] == 1
    wire.close()


def test_a_full_serialization_backlog_tail_drops():
    """1 MB/s: frames of 1500 bytes arriving at once queue until BACKLOG_S of serialization
    is waiting; the rest are dropped (the queue of a router in front of a slower line)."""
    wire = make_wire(Direction(rate_bps=8e6))
    for _ in range(100):
        wire.arrive("ab", 5.0, b"q" * 1500)
    accepted = len(wire.queues["ab"])
    # frame k is accepted while its predecessors' serialization (k * 1.5 ms) <= BACKLOG_S
    assert accepted == int(BACKLOG_S / 1.5e-3) + 1
    assert wire.counters.faults["queue_drops"] == 100 - accepted
    wire.close()
