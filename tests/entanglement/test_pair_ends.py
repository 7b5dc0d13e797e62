"""The pairs and teleport end cores wired to each other in memory (no sockets, no daemon):
outcomes joined by pair id, the run settled only when every announced outcome is joined,
storage times per node sampled without bias, and a peer's bad message is the peer's error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nodes.entanglement.pairs.ends import ReportCore, Reservoir, SenderCore
from nodes.entanglement.swapping import EndToEnd, Finished, Held, Outcomes, decode, encoder
from nodes.entanglement.teleport import ends as tp
from nodes.errors import MalformedMessage, RemoteProtocolError, UnexpectedMessage

PATH = ["a", "r", "b"]


def pair(k: int, t_stored: float, frame: int = 0) -> tuple[EndToEnd, EndToEnd]:
    """End-to-end pair ``k`` as a and b see it (a's id k, b's id 1000 + k)."""
    return (EndToEnd(Held(k, k, t_stored), 1000 + k, frame, {"r": 0.25}, 0.5),
            EndToEnd(Held(1000 + k, k, t_stored), k, frame, {"r": 0.25}, 0.5))


def test_cores_join_outcomes_in_any_order_and_settle_after_finished() -> None:
    sender, report = SenderCore(count=5), ReportCore("x", PATH, np.random.default_rng(1))
    ends = [pair(k, 0.0, frame=1) for k in range(7)]
    bases = ["Z"] * 7
    bits = np.zeros(7, np.uint8)  # frame 1 = X flips Z: b's raw bits are 1 for correlation
    message = sender.on_measured([a for a, _ in ends], bases, bits, t=1.0)
    assert sender.done and len(message.pairs) == 5  # only ``count`` pairs are kept
    assert sender.on_measured([ends[0][0]], ["Z"], bits[:1], 1.0) is None
    report.on_outcomes(decode(encoder.encode(message)))  # through the wire format
    report.on_finished(decode(encoder.encode(sender.finished())))
    assert not report.settled  # b has measured nothing yet
    report.on_measured([b for _, b in ends[:3]], bases[:3], np.ones(3, np.uint8), t=1.5)
    assert not report.settled and report.pairs == 3
    report.on_measured([b for _, b in ends[3:]], bases[3:], np.ones(4, np.uint8), t=2.0)
    assert report.settled and report.pairs == 5
    entry = report.entry()
    assert entry["samples_per_basis"] == {"X": 0, "Y": 0, "Z": 5}
    assert entry["storage_s"]["nodes"] == PATH
    assert entry["storage_s"]["sample"][0] == [1.0, 0.25, 1.5]  # a, repeater r, b
    assert entry["pairs_per_s"] == pytest.approx(5 / 0.5)
    assert entry["unjoined_outcomes"] == 0


@pytest.mark.parametrize("bad, error", [
    (Outcomes([1, 2], "Z", b"\x00\x00", [0.0, 0.0]), MalformedMessage),
    (Outcomes([1], "Q", b"\x00", [0.0]), MalformedMessage),
    (Outcomes([1], "Z", b"\x07", [0.0]), MalformedMessage),
])
def test_malformed_outcomes_are_the_peers_fault(bad: Outcomes, error: type) -> None:
    report = ReportCore("x", PATH, np.random.default_rng(1))
    with pytest.raises(error):
        report.on_outcomes(bad)


def test_out_of_order_messages_are_unexpected() -> None:
    report = ReportCore("x", PATH, np.random.default_rng(1))
    report.on_outcomes(Outcomes([1], "Z", b"\x00", [0.0]))
    with pytest.raises(UnexpectedMessage):  # the same pair twice
        report.on_outcomes(Outcomes([1], "Z", b"\x00", [0.0]))
    report.on_finished(Finished(1))
    with pytest.raises(UnexpectedMessage):
        report.on_outcomes(Outcomes([2], "Z", b"\x00", [0.0]))
    with pytest.raises(UnexpectedMessage):
        report.on_finished(Finished(1))


def test_a_basis_other_than_the_rule_is_rejected() -> None:
    report = ReportCore("x", PATH, np.random.default_rng(1))
    _, b = pair(3, 0.0)
    report.on_measured([b], ["X"], np.zeros(1, np.uint8), 1.0)
    with pytest.raises(UnexpectedMessage):
        report.on_outcomes(Outcomes([3], "Z", b"\x00", [0.0]))


def test_garbage_frames_are_malformed_not_value_errors() -> None:
    for frame in (b"\xc1", b"not msgpack", encoder.encode({"type": "swap"})):
        with pytest.raises(MalformedMessage) as info:
            decode(frame)
        assert isinstance(info.value, RemoteProtocolError) and info.value.scope == "session"
        with pytest.raises(MalformedMessage):
            tp.decode(frame)


def test_reservoir_is_a_uniform_bounded_sample() -> None:
    """Each of n items is kept with probability cap/n: the kept items' mean index is the
    stream's, (n-1)/2, within 4 standard errors of a sample of ``cap`` out of n."""
    n, cap = 20_000, 500
    res = Reservoir(cap, np.random.default_rng(5))
    for i in range(n):
        res.add(i)
    assert len(res.items) == cap and res.seen == n and len(set(res.items)) == cap
    se = math.sqrt((n * n - 1) / 12 / cap * (1 - cap / n))  # finite-population correction
    assert abs(np.mean(res.items) - (n - 1) / 2) < 4 * se


def test_teleport_cores_round_trip_and_reject_a_wrong_ack() -> None:
    rng = np.random.default_rng(2)
    sender, receiver = tp.SenderCore(2, "random", rng), tp.ReceiverCore(["a", "b"], rng)
    for k in range(2):
        theta, phi = sender.next_input()
        wire = encoder.encode(sender.teleported(k, 1, 0, theta, phi, stored=0.01))
        message = receiver.on_message(tp.decode(wire))
        receiver.verified(message, bit=0, stored_b=0.02)
        sender.on_reply(tp.decode(tp.encoder.encode(tp.Ack(k))), round_trip_s=0.001)
    assert sender.done and receiver.on_message(tp.decode(encoder.encode(sender.end()))) is None
    entry = receiver.entry("a-b")
    assert entry["count"] == 2 and entry["fidelity_mean"] == 1.0
    assert entry["storage_s"]["sample"] == [[0.01, 0.02], [0.01, 0.02]]
    with pytest.raises(UnexpectedMessage):
        receiver.on_message(tp.End(2))  # after End
    sender = tp.SenderCore(1, "0", rng)
    sender.teleported(7, 0, 0, 0.0, 0.0, 0.0)
    with pytest.raises(UnexpectedMessage):
        sender.on_reply(tp.Ack(8), 0.001)
    with pytest.raises(MalformedMessage):
        tp.ReceiverCore(["a", "b"], rng).on_message(tp.Teleported(1, 2, 0, 0.0, 0.0, 0.0))


def test_partial_results_are_due_each_time_the_pairs_double() -> None:
    report = ReportCore("x", ["a", "b"], np.random.default_rng(1))
    due = []
    for k in range(20):
        a, b = EndToEnd(Held(k, k, 0.0), 1000 + k, 0, {}, 0.0), \
            EndToEnd(Held(1000 + k, k, 0.0), k, 0, {}, 0.0)
        report.on_outcomes(Outcomes([a.mine.pair], "Z", b"\x00", [0.0]))
        report.on_measured([b], ["Z"], np.zeros(1, np.uint8), 1.0)
        if report.partial_due():
            due.append(report.pairs)
    assert due == [1, 2, 4, 8, 16]
