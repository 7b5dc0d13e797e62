"""Reliable stream core: RFC 6298 timer, Karn, SACK fast retransmit, window, and exactly-once
in-order delivery through a path that drops, duplicates, reorders and reroutes mid-stream."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamsim import Path, StreamRun

from nodes.errors import UnexpectedMessage
from nodes.net.messages import StreamAck, StreamSegment
from nodes.net.stream import StreamConfig, StreamReceiver, StreamSender


def test_clean_path_delivers_everything_without_retransmission():
    r = StreamRun(Path(), Path()).run(500, 0.001, 10.0)
    assert r["delivered"] == r["sent"] == 500 and r["in_order"]
    assert r["sender_retransmitted"] == 0 and r["duplicates_suppressed"] == 0


def test_survives_loss_duplication_reordering_and_a_reroute():
    fwd = Path(delay=0.010, jitter=0.008, drop=0.1, duplicate=0.05, reroute_at=1.0,
               new_delay=0.040, blackout=(1.0, 1.3))
    back = Path(delay=0.010, jitter=0.008, drop=0.1, duplicate=0.05, reroute_at=1.0,
                new_delay=0.040, blackout=(1.0, 1.3))
    run = StreamRun(fwd, back, StreamConfig(window=64, min_rto=0.05))
    r = run.run(2000, 0.001, 60.0)
    print(r)
    assert r["delivered"] == r["sent"] == 2000
    assert r["in_order"] and r["duplicates_delivered"] == 0
    assert r["duplicates_suppressed"] > 0 and r["out_of_order_arrivals"] > 0
    assert r["sender_retransmitted"] > 0 and r["sender_fast_retransmits"] > 0
    assert r["sender_timeouts"] >= 1  # the blackout
    # Longest pause: the 0.3 s blackout plus the backed-off RTO that first gets through.
    assert 0.3 <= r["max_gap_s"] < 1.0
    assert r["core_max_gap_s"] == r["max_gap_s"]  # the receiver core measures it too
    assert run.sender.srtt == pytest.approx(0.084, abs=0.02)  # 2 x 40 ms + jitter after reroute


@settings(max_examples=25, deadline=None)
@given(st.floats(0, 0.3), st.floats(0, 0.2), st.floats(0, 0.02), st.integers(0, 2**16),
       st.integers(1, 32))
def test_exactly_once_in_order_for_any_path(drop, dup, jitter, seed, window):
    path = Path(delay=0.005, jitter=jitter, drop=drop, duplicate=dup, reroute_at=0.2,
                new_delay=0.02)
    r = StreamRun(path, path, StreamConfig(window=window, min_rto=0.05), seed=seed).run(
        150, 0.002, 600.0)
    assert r["delivered"] == 150 and r["in_order"] and r["duplicates_delivered"] == 0


def test_a_slow_reader_closes_the_window_and_probes_reopen_it():
    run = StreamRun(Path(), Path(), StreamConfig(window=8, min_rto=0.05), take_every=0.5)
    r = run.run(40, 0.0, 30.0)
    assert r["delivered"] == 40 and r["in_order"]
    assert r["sender_window_probes"] >= 1
    # only a probe (or its retransmission) overruns the window; the reader reopens it
    assert run.receiver.stats["beyond_window"] <= r["sender_window_probes"] + r["sender_timeouts"]
    assert 40 / 8 * 0.5 <= r["finished_at"] < 40 / 8 * 0.5 + 0.1  # paced by the reader


def test_rto_follows_rfc6298():
    cfg = StreamConfig(min_rto=0.001, initial_rto=1.0, granularity=0.001)
    s = StreamSender(1, cfg)
    assert s.rto == 1.0
    s.send(b"a")
    s.segments_to_send(0.0)
    s.receive_ack(StreamAck(1, 1, 64), 0.1)  # R = 0.1
    assert (s.srtt, s.rttvar) == pytest.approx((0.1, 0.05))
    assert s.rto == pytest.approx(0.1 + 4 * 0.05)
    s.send(b"b")
    s.segments_to_send(1.0)
    s.receive_ack(StreamAck(1, 2, 64), 1.3)  # R' = 0.3
    rttvar = 0.75 * 0.05 + 0.25 * abs(0.1 - 0.3)
    srtt = 0.875 * 0.1 + 0.125 * 0.3
    assert (s.srtt, s.rttvar) == pytest.approx((srtt, rttvar))
    assert s.rto == pytest.approx(srtt + 4 * rttvar)
    clamped = StreamSender(1, StreamConfig(min_rto=0.5))
    clamped._rtt_sample(0.01)
    assert clamped.rto == 0.5  # RFC 6298 (2.4): never below the minimum


def test_backoff_doubles_to_the_cap_and_karn_skips_retransmitted_samples():
    s = StreamSender(1, StreamConfig(initial_rto=1.0, max_rto=4.0))
    s.send(b"a")
    s.segments_to_send(0.0)
    for expected, at in ((2.0, 1.0), (4.0, 3.0), (4.0, 7.0)):
        s.handle_timer(at)
        assert s.rto == expected
        assert [seg.seq for seg in s.segments_to_send(at)] == [0]
    s.receive_ack(StreamAck(1, 1, 64), 7.01)
    assert s.srtt is None and s.idle  # no sample from a retransmitted message


def test_sack_triggers_fast_retransmit_of_the_hole_only():
    s = StreamSender(1, StreamConfig(dupthresh=3))
    for i in range(6):
        s.send(bytes([i]))
    assert len(s.segments_to_send(0.0)) == 6
    s.receive_ack(StreamAck(1, 1, 64, ((2, 4),)), 0.1)  # 1 missing, two above it
    assert s.segments_to_send(0.1) == []
    s.receive_ack(StreamAck(1, 1, 64, ((2, 5),)), 0.11)
    assert s.segments_to_send(0.11) == [StreamSegment(1, 1, b"\x01")]
    assert s.stats["fast_retransmits"] == 1


def test_receiver_counts_and_sack_blocks():
    r = StreamReceiver(3, StreamConfig(window=100))
    assert r.receive_segment(StreamSegment(3, 0, b"a")) == StreamAck(3, 1, 99)
    for seq in range(2, 60, 2):  # 29 holes: only 16 SACK blocks fit
        ack = r.receive_segment(StreamSegment(3, seq, b"x"))
    assert ack.cum == 1 and len(ack.sack) == 16 and ack.sack[0] == (2, 3)
    r.receive_segment(StreamSegment(3, 2, b"x"))
    r.receive_segment(StreamSegment(3, 500, b"x"))
    assert r.stats == {"received": 32, "delivered": 1, "duplicates": 1, "out_of_order": 29,
                       "beyond_window": 1}
    assert r.take() == [b"a"] and r.take() == []


def test_peer_errors_are_typed():
    s = StreamSender(1)
    s.send(b"a")
    s.segments_to_send(0.0)
    with pytest.raises(UnexpectedMessage, match="beyond what was sent"):
        s.receive_ack(StreamAck(1, 2, 64), 0.1)
    with pytest.raises(UnexpectedMessage, match="beyond what was sent"):
        s.receive_ack(StreamAck(1, 0, 64, ((0, 5),)), 0.1)
    with pytest.raises(UnexpectedMessage, match="stream 2"):
        s.receive_ack(StreamAck(2, 1, 64), 0.1)
    with pytest.raises(UnexpectedMessage):
        StreamReceiver(1).receive_segment(StreamSegment(2, 0, b""))
    with pytest.raises(ValueError):
        StreamConfig(min_rto=2.0, initial_rto=1.0)


def test_reroute_resends_what_was_in_flight_and_undoes_the_backoff():
    s = StreamSender(1, StreamConfig(min_rto=0.05, initial_rto=1.0))
    s.send(b"a")
    s.segments_to_send(0.0)
    s.receive_ack(StreamAck(1, 1, 64), 0.02)  # srtt 0.02 -> rto 0.06
    for i in range(3):
        s.send(bytes([i]))
    s.segments_to_send(1.0)
    s.receive_ack(StreamAck(1, 1, 64, ((2, 3),)), 1.02)  # sample 0.02 -> rto 0.05
    assert s.rto == pytest.approx(0.05)
    s.handle_timer(1.06)  # armed at 1.0 + 0.06
    s.segments_to_send(1.06)
    s.handle_timer(1.18)
    assert s.rto == pytest.approx(0.2)  # backed off twice
    s.reroute(1.2)
    assert s.rto == pytest.approx(0.05)
    assert [seg.seq for seg in s.segments_to_send(1.2)] == [1, 3]  # 2 is SACKed
    assert s.next_deadline() == pytest.approx(1.25)
