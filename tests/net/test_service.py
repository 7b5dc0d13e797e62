"""NetService on loopback, in-process: real UDP sockets between the services (no relays, a
cut is both ends sending into a socket nobody reads), real time, short timers."""

from __future__ import annotations

import time

import pytest
import trio

from emulator.child_config import Endpoint
from emulator.clock import EmulatedClock
from nodes.net.linkstate import LinkConfig, RoutingConfig
from nodes.net.messages import RoutedFrame, encode
from nodes.net.service import NetService, NoRoute

CFG = RoutingConfig(hello_interval=0.05, dead_interval=0.2, retransmit_interval=0.05,
                    min_lsa_interval=0.05)
BOUND_S = 10.0  # every wait below is bounded by this (wall seconds)


class Net:
    """Services named by the ends of ``links`` ((a, b, length_km)), each with its own socket."""

    def __init__(self, links: list[tuple[str, str, float]]) -> None:
        self.links = links
        self.clock = EmulatedClock(time.monotonic())
        self.names = sorted({n for a, b, _ in links for n in (a, b)})
        self.peers: dict[str, dict[str, Endpoint]] = {n: {} for n in self.names}
        self.events: list[tuple[str, str, dict]] = []
        self.sockets: dict[str, trio.socket.SocketType] = {}
        self.services: dict[str, NetService] = {}
        self.hole: trio.socket.SocketType | None = None
        self.scopes: dict[str, trio.CancelScope] = {}

    def service(self, name: str, first_seq: int = 0) -> NetService:
        mine = {f"{a}-{b}": (b if a == name else a, LinkConfig(length_km=km))
                for a, b, km in self.links if name in (a, b)}

        async def sink(kind: str, fields: dict) -> None:
            self.events.append((name, kind, fields))

        return NetService(name, mine, CFG, self.clock, first_seq=first_seq, events=sink)

    async def start(self, nursery: trio.Nursery) -> None:
        for name in self.names:
            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            self.sockets[name] = sock
        self.hole = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await self.hole.bind(("127.0.0.1", 0))
        for a, b, _ in self.links:
            self.peers[a][b] = self.endpoint(b)
            self.peers[b][a] = self.endpoint(a)
        for name in self.names:
            await self.launch(nursery, name)

    async def launch(self, nursery: trio.Nursery, name: str, first_seq: int = 0) -> trio.CancelScope:
        svc = self.services[name] = self.service(name, first_seq)
        scope = self.scopes[name] = trio.CancelScope()

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await svc.run(self.sockets[name], lambda: self.peers[name],
                              task_status=task_status)

        await nursery.start(run)
        return scope

    def endpoint(self, name: str) -> Endpoint:
        return Endpoint(tcp=0, udp=self.sockets[name].getsockname()[1])

    def cut(self, a: str, b: str) -> None:
        hole = Endpoint(tcp=0, udp=self.hole.getsockname()[1])
        self.peers[a][b] = self.peers[b][a] = hole

    def restore(self, a: str, b: str) -> None:
        self.peers[a][b], self.peers[b][a] = self.endpoint(b), self.endpoint(a)

    async def converged(self, src: str, dst: str, path: tuple[str, ...]) -> float:
        """Wall seconds until ``src`` routes to ``dst`` along ``path``."""
        t0 = time.monotonic()
        with trio.fail_after(BOUND_S):
            while (r := self.services[src].route(dst)) is None or r.path != path:
                await self.services[src].routes_changed()
        return time.monotonic() - t0


SQUARE = [("a", "b", 1.0), ("b", "d", 1.0), ("a", "c", 2.0), ("c", "d", 2.0)]


async def test_routes_datagrams_and_a_stream_over_two_hops(nursery):
    net = Net([("a", "b", 1.0), ("b", "c", 1.0)])
    await net.start(nursery)
    await net.converged("a", "c", ("a", "b", "c"))
    assert net.services["a"].next_hop("c") == "b"
    inbox = net.services["c"].datagrams(7)
    await net.services["a"].send_datagram("c", 7, b"hello")
    with trio.fail_after(BOUND_S):
        got = await inbox.receive()
    assert (got.src, got.port, got.payload) == ("a", 7, b"hello")
    assert net.services["b"].forwarder.counters["forwarded"] >= 1
    with pytest.raises(NoRoute):
        await net.services["a"].send_datagram("nowhere", 7, b"x")

    async def accept(task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        stream = await net.services["c"].accept_stream(9)
        received.extend([await stream.receive() for _ in range(300)])

    received: list[bytes] = []
    await nursery.start(accept)
    stream = await net.services["a"].open_stream("c", 9)
    for i in range(300):
        stream.send(i.to_bytes(4, "big"))
    with trio.fail_after(BOUND_S):
        await stream.wait_acked()
        while len(received) < 300:
            await trio.sleep(0.01)
    assert [int.from_bytes(m, "big") for m in received] == list(range(300))
    assert any(kind == "neighbour_up" for _, kind, _ in net.events)
    assert net.services["b"].counters()["net.forwarded"] >= 300
    nursery.cancel_scope.cancel()


async def test_stream_survives_a_cut_and_routes_come_back(nursery):
    net = Net(SQUARE)
    await net.start(nursery)
    await net.converged("a", "d", ("a", "b", "d"))
    received: list[int] = []

    async def accept(task_status=trio.TASK_STATUS_IGNORED):
        task_status.started()
        stream = await net.services["d"].accept_stream(5)
        while True:
            received.append(int.from_bytes(await stream.receive(), "big"))

    await nursery.start(accept)
    stream = await net.services["a"].open_stream("d", 5)
    count, interval = 400, 0.002

    async def write():
        for i in range(count):
            stream.send(i.to_bytes(4, "big"))
            await trio.sleep(interval)

    async with trio.open_nursery() as inner:
        inner.start_soon(write)
        await trio.sleep(0.3)
        net.cut("a", "b")
        took = await net.converged("a", "d", ("a", "c", "d"))
        assert took < CFG.dead_interval + 1.0  # detection (dead interval) + a flood + slack
    with trio.fail_after(BOUND_S):
        await stream.wait_acked()
        while len(received) < count:
            await trio.sleep(0.01)
    assert received == list(range(count))  # all delivered, in order, none twice
    assert stream.sender.stats["reroutes"] >= 1
    downs = [f for n, k, f in net.events if k == "neighbour_down" and n == "a"]
    assert any(f["neighbour"] == "b" and f["reason"] == "dead" for f in downs)
    net.restore("a", "b")
    await net.converged("a", "d", ("a", "b", "d"))
    assert any(k == "route_changed" and f["changed"] for n, k, f in net.events if n == "a")
    nursery.cancel_scope.cancel()


async def test_restarted_router_rejoins_with_a_newer_lsa(nursery):
    net = Net(SQUARE)
    await net.start(nursery)
    await net.converged("a", "d", ("a", "b", "d"))
    old_seq = net.services["d"].router.lsdb["b"].lsa.seq
    net.scopes["b"].cancel()  # "crash" b: a and d find it dead and go round through c
    await net.converged("a", "d", ("a", "c", "d"))
    # a fresh b on the same socket (no memory of its state), seq from the emulated time as
    # the runtime does
    await net.launch(nursery, "b", first_seq=int(1000 * net.clock.now()))
    await net.converged("a", "d", ("a", "b", "d"))
    assert net.services["d"].router.lsdb["b"].lsa.seq > old_seq
    nursery.cancel_scope.cancel()


async def test_bad_input_is_counted_and_magic_goes_to_its_handler(nursery):
    net = Net([("a", "b", 1.0)])
    await net.start(nursery)
    seen: list[tuple[bytes, str, str]] = []
    net.services["b"].register_udp_handler(b"QH", lambda d, nb, link: seen.append((d, nb, link)))
    with pytest.raises(ValueError):
        net.services["b"].register_udp_handler(b"QH", lambda *_: None)
    await net.converged("a", "b", ("a", "b"))
    stranger = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await stranger.bind(("127.0.0.1", 0))
    b_addr = ("127.0.0.1", net.endpoint("b").udp)
    await stranger.sendto(b"\x81\xa4type\xa5hello", b_addr)  # not from a neighbour
    a = net.services["a"]
    assert a.send_udp("b", b"QHheader bytes")
    assert a.send_udp("b", b"\xc1garbage")
    assert a.send_udp("b", encode(RoutedFrame("a", "zz", 5, "datagram", b"")))  # unknown dst
    assert a.send_udp("b", encode(RoutedFrame("a", "b", 5, "datagram", b"\x00")))  # bad body
    b = net.services["b"]
    with trio.fail_after(BOUND_S):
        while not (seen and b.counters().get("net.malformed", 0) >= 2
                   and b.counters().get("net.foreign", 0) >= 1
                   and b.counters().get("net.dropped_no_route", 0) >= 1):
            await trio.sleep(0.01)
    assert seen == [(b"QHheader bytes", "a", "a-b")]
    assert b.route("a") is not None  # still routing
    stranger.close()
    nursery.cancel_scope.cancel()


def test_scenario_routing_becomes_the_core_config():
    from emulator.scenario import parse_scenario
    from nodes.net.service import node_links, routing_config
    raw = {"scenario": {"name": "t", "duration_s": 5}, "nodes": [{"name": n} for n in "abc"],
           "links": [{"a": "a", "b": "b", "length_km": 10, "quantum": {"attenuation_db_per_km": 0.25}},
                     {"a": "c", "b": "a", "length_km": 3, "name": "ca"}],
           "routing": {"hello_interval_s": 0.2, "dead_interval_s": 1, "metric": "weighted",
                       "weights": {"length_km": 1, "loss_db": 2, "hop": 0.5}}}
    sc = parse_scenario(raw)
    cfg = routing_config(sc.routing)
    assert (cfg.hello_interval, cfg.dead_interval, cfg.retransmit_interval) == (0.2, 1, 0.2)
    assert (cfg.metric.length_km, cfg.metric.loss_db, cfg.metric.hop, cfg.metric.rtt_ms) == (
        1, 2, 0.5, 0)
    links = node_links("a", sc)  # anything with .links works; a node passes its view
    assert links["a-b"] == ("b", LinkConfig(length_km=10, loss_db=pytest.approx(2.5)))
    assert links["ca"] == ("c", LinkConfig(length_km=3, loss_db=0.0))
    sc.routing.metric, sc.routing.weights = "hops", None
    assert routing_config(sc.routing).metric.hop == 1
