"""HybridCore (sans-I/O): a router matches header and arrival in either order, switches with
the inverse readout, forwards the header (flagged when the payload was lost or late), and
drops bad MACs, TTL 0 and unknown destinations without forwarding; a destination delivers."""

from __future__ import annotations

import pytest

from nodes.net.forwarding import Forwarder, HeaderForwarder
from nodes.net.header import (
    FLAG_PAYLOAD_LATE,
    FLAG_PAYLOAD_LOST,
    PAYLOAD_QUBIT,
    HeaderCodec,
    HybridHeader,
    PayloadDescriptor,
)
from nodes.net.hybrid import (
    Arrival,
    Delivered,
    Discard,
    HybridCore,
    SendHeader,
    Store,
    Switch,
)
from nodes.net.spf import Route

KEY_IN, KEY_OUT = b"k" * 32, b"o" * 32


def router(compensate: bool = True) -> HybridCore:
    fw = Forwarder("r1", {"bob": Route("bob", "r1-b", "bob", 1.0, ("r1", "bob"))})
    return HybridCore(HeaderForwarder(fw, {"a-r1": KEY_IN, "r1-b": KEY_OUT}), compensate)


def header(pid: int = 7, ttl: int = 5, dst: str = "bob", flags: int = 0) -> HybridHeader:
    return HybridHeader("alice", dst, flow=1, seq=pid, ttl=ttl, timestamp_ns=1,
                        payload=PayloadDescriptor(PAYLOAD_QUBIT, flags, 1, pid))


def wire(h: HybridHeader, key: bytes = KEY_IN) -> bytes:
    return HeaderCodec(key).encode(h)


ARRIVED = Arrival("a-r1", 7, 1.0, True, -1, 1.01, (0.1, -0.2, 0.3))


@pytest.mark.parametrize("header_first", [True, False])
def test_router_switches_once_both_halves_are_in(header_first: bool) -> None:
    core = router()
    if header_first:
        assert core.header(wire(header()), "a-r1", 1.0) == []
        actions = core.arrival(ARRIVED, 1.0)
    else:
        assert core.arrival(ARRIVED, 1.0) == []
        actions = core.header(wire(header()), "a-r1", 1.0)
    assert actions == [Switch(7, "r1-b", (-0.1, 0.2, -0.3), 1)]
    (sent,) = core.switched(7, True)
    assert isinstance(sent, SendHeader) and sent.neighbour == "bob"
    out = HeaderCodec(KEY_OUT).decode(sent.data)  # re-MACed for the next link, TTL - 1
    assert out.ttl == 4 and out.payload.flags == 0 and out.payload.payload_id == 7
    assert core.pending() == 0


def test_without_compensation_no_waveplate() -> None:
    core = router(compensate=False)
    core.header(wire(header()), "a-r1", 1.0)
    assert core.arrival(ARRIVED, 1.0) == [Switch(7, "r1-b", None, 1)]


def test_late_and_lost_payloads_flag_the_header() -> None:
    core = router()
    core.header(wire(header()), "a-r1", 1.0)
    core.arrival(ARRIVED, 1.0)
    (late,) = core.switched(7, False)
    flags = HeaderCodec(KEY_OUT).decode(late.data).payload.flags
    assert flags == FLAG_PAYLOAD_LOST | FLAG_PAYLOAD_LATE
    core.header(wire(header(8)), "a-r1", 1.0)
    (lost,) = core.arrival(Arrival("a-r1", 8, 1.0, False), 1.0)
    assert HeaderCodec(KEY_OUT).decode(lost.data).payload.flags == FLAG_PAYLOAD_LOST
    # flagged upstream: forwarded at once, no payload to wait for
    (again,) = core.header(wire(header(9, flags=FLAG_PAYLOAD_LOST)), "a-r1", 1.0)
    assert HeaderCodec(KEY_OUT).decode(again.data).payload.flags == FLAG_PAYLOAD_LOST
    assert core.counters["hybrid_late"] == 1 and core.counters["hybrid_lost"] == 1


@pytest.mark.parametrize("data, reason", [
    (wire(header(), KEY_OUT), "bad_mac"),  # MACed with another link's key
    (wire(header(ttl=1)), "ttl_expired"),  # would leave with TTL 0
    (wire(header(dst="carol")), "no_route"),  # unknown destination
    (b"QH\x01\x00", "malformed"),
])
def test_bad_headers_are_dropped_and_counted(data: bytes, reason: str) -> None:
    core = router()
    assert core.header(data, "a-r1", 1.0) == []
    assert core.arrival(ARRIVED, 1.0) == []  # its payload is never switched (late at the daemon)
    assert core.counters[f"dropped_{reason}"] == 1
    assert core.counters["hybrid_headers_forwarded"] == 0


def test_destination_delivers_and_expires_unmatched() -> None:
    fw = Forwarder("bob", {})
    core = HybridCore(HeaderForwarder(fw, {"r1-b": KEY_OUT}), True)
    h = header()
    core.header(wire(h, KEY_OUT), "r1-b", 1.0)
    stored = Arrival("r1-b", 7, 1.0, True, 3, 1.0, (0.0, 0.0, 0.1))
    assert core.arrival(stored, 1.0) == [Delivered(h, stored)]
    (lost,) = core.header(wire(header(8, flags=FLAG_PAYLOAD_LOST | FLAG_PAYLOAD_LATE), KEY_OUT),
                          "r1-b", 1.0)
    assert lost.arrival is None and lost.late
    core.arrival(Arrival("r1-b", 9, 1.0, True, 4), 1.0)  # its header never comes
    assert core.expire(1.5) == []
    assert core.expire(2.1) == [Discard(4)]


def test_destination_with_a_delay_line_stores_from_it() -> None:
    fw = Forwarder("bob", {})
    core = HybridCore(HeaderForwarder(fw, {"r1-b": KEY_OUT}), True)
    h = header()
    core.header(wire(h, KEY_OUT), "r1-b", 1.0)
    spooled = Arrival("r1-b", 7, 1.0, True, -1, 1.02, (0.0, 0.2, 0.0))
    assert core.arrival(spooled, 1.0) == [Store(7, "r1-b", (-0.0, -0.2, -0.0), 1)]
    (got,) = core.stored(7, 5)
    assert got.arrival.slot == 5 and got.arrival.reference == (0.0, 0.0, 0.0)  # corrected
    core.header(wire(header(8), KEY_OUT), "r1-b", 1.0)
    core.arrival(Arrival("r1-b", 8, 1.0, True, -1, 1.02), 1.0)
    (late,) = core.stored(8, None)
    assert late.arrival is None and late.late and core.pending() == 0
