"""Forwarding plane: local delivery, TTL, drops by reason, and no loops while routes change."""

from __future__ import annotations

import msgspec
import pytest
from netsim import NetSim, mesh, ring

from nodes.net.forwarding import Deliver, Drop, Forward, Forwarder, HeaderForwarder
from nodes.net.header import HeaderCodec, HybridHeader
from nodes.net.linkstate import Route, RoutingConfig
from nodes.net.messages import RoutedFrame

ROUTES = {"c": Route("c", "l-b", "b", 2.0, ("a", "b", "c")),
          "b": Route("b", "l-b", "b", 1.0, ("a", "b"))}
CFG = RoutingConfig(hello_interval=0.5, dead_interval=2.0, retransmit_interval=0.3)


def frame(src: str, dst: str, ttl: int) -> RoutedFrame:
    return RoutedFrame(src, dst, ttl, "datagram", b"x")


def test_deliver_forward_and_drop_by_reason():
    fw = Forwarder("a", ROUTES)
    assert fw.handle(frame("z", "a", 1), "l-z") == (Deliver(), frame("z", "a", 1))
    assert fw.handle(frame("z", "c", 5), "l-z") == (Forward("l-b", "b", 4), frame("z", "c", 4))
    assert fw.handle(frame("z", "c", 1), "l-z")[0] == Drop("ttl_expired")  # would leave with 0
    assert fw.handle(frame("z", "a", 0), "l-z")[0] == Drop("ttl_expired")  # never valid on a wire
    assert fw.handle(frame("z", "q", 9), "l-z")[0] == Drop("no_route")
    assert fw.handle(frame("z", "c", 9), "l-b")[0] == Drop("loop")  # back where it came from
    assert fw.handle(frame("a", "c", 9), "l-z")[0] == Drop("own_frame")
    assert fw.counters == {"delivered": 1, "forwarded": 1, "dropped_ttl_expired": 2,
                           "dropped_no_route": 1, "dropped_loop": 1, "dropped_own_frame": 1}


def test_originate_keeps_the_initial_ttl_and_delivers_to_self():
    fw = Forwarder("a", ROUTES, default_ttl=3)
    decision, f = fw.originate("c", "stream", b"hi")
    assert decision == Forward("l-b", "b", 3) and f == RoutedFrame("a", "c", 3, "stream", b"hi")
    assert fw.originate("a", "datagram", b"")[0] == Deliver()
    assert fw.originate("nowhere", "datagram", b"")[0] == Drop("no_route")
    assert fw.originate("c", "datagram", b"", ttl=0)[0] == Drop("ttl_expired")
    with pytest.raises(ValueError):
        Forwarder("a", default_ttl=0)


def walk(sim: NetSim, src: str, dst: str, ttl: int = 32) -> tuple[str, list[str]]:
    """Hop a frame through every router's current table; returns (outcome, nodes visited)."""
    forwarders = {n: Forwarder(n, r.routes) for n, r in sim.routers.items()}
    decision, f = forwarders[src].originate(dst, "datagram", b"", ttl=ttl)
    node, path = src, [src]
    for _ in range(ttl + 1):
        if isinstance(decision, Deliver):
            return "delivered", path
        if isinstance(decision, Drop):
            return decision.reason, path
        node, link = decision.next_hop, decision.link
        path.append(node)
        if node not in forwarders or sim.links[link].cut:
            return "lost", path
        decision, f = forwarders[node].handle(f, link)
    raise AssertionError(f"frame still moving after {ttl} hops: {path}")


def test_converged_mesh_delivers_along_the_computed_path():
    sim = NetSim.build(CFG, mesh(4))
    sim.run_until_converged(5.0)
    for src in ("r00", "r05", "r15"):
        for dst in sim.routers:
            outcome, path = walk(sim, src, dst)
            assert outcome == "delivered"
            assert src == dst or tuple(path) == sim.routers[src].routes[dst].path


def test_no_frame_loops_while_a_ring_reconverges():
    sim = NetSim.build(CFG, ring(10))
    sim.run_until_converged(5.0)
    sim.run_until(6.0)
    sim.cut("l0")
    outcomes: dict[str, int] = {}
    t = sim.now
    while t < 6.0 + CFG.dead_interval + 0.5:  # every state the tables pass through
        t += 0.005
        sim.run_until(t)
        for src, dst in (("r00", "r01"), ("r02", "r09"), ("r05", "r00")):
            outcome, path = walk(sim, src, dst, ttl=16)
            assert len(path) == len(set(path)) or outcome != "delivered"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert set(outcomes) <= {"delivered", "lost", "loop", "no_route"}
    assert outcomes["delivered"] > 0 and outcomes["lost"] > 0  # lost: before detection
    assert walk(sim, "r00", "r01")[0] == "delivered"


def test_hybrid_headers_are_verified_decided_and_re_maced():
    keys = {"l-z": b"z" * 16, "l-b": b"b" * 16}
    hf = HeaderForwarder(Forwarder("a", ROUTES), keys)
    z, b = HeaderCodec(keys["l-z"]), HeaderCodec(keys["l-b"])
    h = HybridHeader("z", "c", flow=1, seq=5, ttl=4, timestamp_ns=10)
    decision, header, out = hf.handle(z.encode(h), "l-z")
    assert decision == Forward("l-b", "b", 3) and header.ttl == 3
    assert b.decode(out) == msgspec.structs.replace(h, ttl=3)  # under the next link's key
    assert hf.handle(b.encode(h), "l-z")[0] == Drop("bad_mac")  # wrong link's key
    assert hf.handle(z.encode(h)[:-1], "l-z")[0] == Drop("malformed")
    assert hf.handle(z.encode(h), "l-q")[0] == Drop("unknown_link")
    for bad, reason in ((msgspec.structs.replace(h, ttl=0), "ttl_expired"),
                        (msgspec.structs.replace(h, ttl=1), "ttl_expired"),
                        (msgspec.structs.replace(h, dst="q"), "no_route")):
        decision, header, out = hf.handle(z.encode(bad), "l-z")
        assert decision == Drop(reason) and out is None
    decision, header, out = hf.handle(z.encode(msgspec.structs.replace(h, dst="a")), "l-z")
    assert decision == Deliver() and header.dst == "a" and out is None
    assert hf.counters == {"forwarded": 1, "delivered": 1, "dropped_bad_mac": 1,
                           "dropped_malformed": 1, "dropped_unknown_link": 1,
                           "dropped_ttl_expired": 2, "dropped_no_route": 1}
