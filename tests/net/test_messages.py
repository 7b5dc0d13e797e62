"""Network-layer messages and the routing core under hostile input: decoding raises only
``MalformedMessage``; any sequence of well-typed messages leaves the router consistent."""

from __future__ import annotations

import msgspec
from hypothesis import event, given, settings
from hypothesis import strategies as st

from nodes.errors import MalformedMessage
from nodes.net.linkstate import LinkConfig, LinkStateRouter, RoutingConfig
from nodes.net.messages import (
    Hello,
    LinkAdvert,
    Lsa,
    LsaAck,
    RoutedFrame,
    StreamAck,
    decode,
    decode_stream,
    encode,
)

NAMES = st.sampled_from(["x", "y", "z", "w"])
LINKS = st.sampled_from(["l1", "l2", "l3"])
TIME = st.floats(0, 100, allow_nan=False)
hellos = st.builds(Hello, router=NAMES, link=LINKS, hello_interval=st.sampled_from([0.5, 1.0]),
                   dead_interval=st.just(2.0), t=TIME, seen=st.none() | st.just("x") | NAMES,
                   echo=st.none() | TIME, held=st.floats(0, 5))
adverts = st.builds(LinkAdvert, neighbour=st.just("x") | NAMES, link=LINKS, length_km=st.floats(0, 100),
                    loss_db=st.floats(0, 30), rtt_ms=st.none() | st.floats(0, 1000))
lsas = st.builds(Lsa, origin=NAMES, seq=st.integers(0, 50), age=st.floats(0, 200),
                 links=st.lists(adverts, max_size=4).map(tuple))
acks = st.builds(LsaAck, origin=NAMES, seq=st.integers(0, 50))


def test_round_trip_and_rejects():
    frame = RoutedFrame("a", "b", 3, "stream", encode(StreamAck(1, 2, 3)))
    assert decode(encode(frame)) == frame
    assert decode_stream(frame.payload) == StreamAck(1, 2, 3)
    for bad in (b"", b"\xc1", encode(StreamAck(1, 2, 3)),
                msgspec.msgpack.encode({"type": "routed", "src": "a", "dst": "b", "ttl": 300,
                                        "proto": "stream", "payload": b""}),
                msgspec.msgpack.encode({"type": "routed", "src": "a", "dst": "b", "ttl": 3,
                                        "proto": "tcp", "payload": b""}),
                msgspec.msgpack.encode({"type": "hello", "router": "", "link": "l"})):
        try:
            decode(bad)
        except MalformedMessage:
            continue
        raise AssertionError(f"accepted {bad!r}")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_malformed(data):
    for fn in (decode, decode_stream):
        try:
            fn(data)
        except MalformedMessage:
            pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(LINKS, hellos | lsas | acks, st.floats(0, 0.5)), max_size=80),
       st.data())
def test_any_message_sequence_leaves_the_router_consistent(events, data):
    cfg = RoutingConfig(hello_interval=0.5, dead_interval=2.0, refresh_interval=10.0,
                        max_age=30.0)
    r = LinkStateRouter("x", {"l1": LinkConfig(1.0), "l2": LinkConfig(2.0)}, cfg, 0.0)
    now = 0.0
    routed: list[bool] = []
    start = [("l1", Hello("y", "l1", 0.5, 2.0, 0.0, seen="x"), 0.0),
             ("l1", Lsa("y", 3, 0.0, (LinkAdvert("x", "l1", 1.0), LinkAdvert("z", "l3"))), 0.0),
             ("l2", Hello("z", "l2", 0.5, 2.0, 0.0, seen="x"), 0.0),
             ("l2", Lsa("z", 1, 0.0, (LinkAdvert("x", "l2", 2.0), LinkAdvert("y", "l3"))), 0.0)]
    for link, message, dt in start + events:
        now += dt
        if isinstance(message, Hello) and data.draw(st.booleans()):
            link = message.link  # mostly well addressed, so adjacencies form
        if data.draw(st.booleans()):
            now = max(now, r.next_deadline())
            r.handle_timer(now)
        r.receive(link, message, now)
        routed.append(bool(r.routes))
        assert r.next_deadline() >= 0
        for dst, route in r.routes.items():
            state = r.links[route.link]
            assert route.path[0] == "x" and route.path[-1] == dst and dst != "x"
            assert state.neighbour is not None and state.neighbour.name == route.next_hop
            assert route.cost > 0
        assert r.lsdb["x"].lsa.seq >= 1
    event(f"had routes: {any(routed)}")
