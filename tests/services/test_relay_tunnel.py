"""Program tunnels: three nodes in a line over in-memory channels, real loopback programs."""

from __future__ import annotations

import math

import pytest
import trio

from nodes.errors import RemoteProtocolError
from nodes.services.tunnel import router
from nodes.services.tunnel.router import CLOSE, DATA, OPEN, TunnelFrame
from nodes.services.tunnel.service import TunnelService


class FakeChannel:
    def __init__(self, send, receive) -> None:
        self._send, self._receive = send, receive

    async def send(self, payload: bytes) -> None:
        await self._send.send(payload)

    async def receive(self) -> bytes:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            raise ConnectionError("closed") from None


class FakeNetwork:
    """Channel ``tunnel`` between neighbours as in-memory channel pairs."""

    def __init__(self) -> None:
        self.pipes: dict[tuple[str, str], tuple] = {}

    def pipe(self, a: str, b: str):
        key = (min(a, b), max(a, b))
        if key not in self.pipes:
            ab = trio.open_memory_channel(math.inf)
            ba = trio.open_memory_channel(math.inf)
            self.pipes[key] = (FakeChannel(ab[0], ba[1]), FakeChannel(ba[0], ab[1]))
        low, high = self.pipes[key]
        return low if a == key[0] else high

    def transport(self, node: str):
        network = self

        class Transport:
            async def connect(self, peer, channel):
                return network.pipe(node, peer)

            async def accept(self, peer, channel):
                return network.pipe(node, peer)

        return Transport()


async def echo_server(task_status=trio.TASK_STATUS_IGNORED):
    async def handle(stream):
        async with stream:
            while data := await stream.receive_some(65536):
                await stream.send_all(data.upper())

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)


async def neighbours(nursery, network: FakeNetwork, program_port: int | None):
    """Tunnel services of neighbours a and b (b's program at ``program_port``), serving in
    ``nursery``; (a, b, a's local ports by peer)."""
    a = TunnelService("a", network.transport("a"), {"b": "b"}, None)
    b = TunnelService("b", network.transport("b"), {"a": "a"}, program_port)
    ports = await a.bind()
    await b.bind()
    nursery.start_soon(a.serve)
    nursery.start_soon(b.serve)
    return a, b, ports


async def test_bytes_cross_two_hops_both_ways_and_connections_end_cleanly():
    network = FakeNetwork()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(echo_server)
            services = {
                "a": TunnelService("a", network.transport("a"), {"b": "b", "c": "b"}, None),
                "b": TunnelService("b", network.transport("b"), {"a": "a", "c": "c"}, None),
                "c": TunnelService("c", network.transport("c"), {"a": "b", "b": "b"}, port),
            }
            ports = {name: await s.bind() for name, s in services.items()}
            for service in services.values():
                nursery.start_soon(service.serve)
            for round_ in range(3):  # several connections, one after the other
                stream = await trio.open_tcp_stream("127.0.0.1", ports["a"]["c"])
                got = b""
                for i in range(50):
                    message = f"hello {round_} {i};".encode()
                    await stream.send_all(message)
                    while len(got) < sum(len(f"hello {round_} {k};") for k in range(i + 1)):
                        got += await stream.receive_some(65536)
                assert got == b"".join(f"HELLO {round_} {k};".encode() for k in range(50))
                await stream.aclose()
            for _ in range(100):  # the close travels to c and back
                if not any(s._locals for s in services.values()):
                    break
                await trio.sleep(0.01)
            assert not any(s._locals for s in services.values())
            assert services["b"].counters["tunnel_forwarded"] > 150
            assert services["c"].counters["tunnel_answered"] == 3
            nursery.cancel_scope.cancel()


async def test_connection_to_a_node_without_a_listening_program_is_closed():
    network = FakeNetwork()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            _, b, ports = await neighbours(nursery, network, None)
            stream = await trio.open_tcp_stream("127.0.0.1", ports["b"])
            assert await stream.receive_some(100) == b""  # closed by the far end
            assert b.counters["tunnel_refused"] == 1
            nursery.cancel_scope.cancel()


def test_decide_delivers_forwards_and_drops():
    routes = {"c": "b"}
    frame = TunnelFrame("a", 1, "c", DATA, 5, b"x")
    onward = router.decide("b", routes, frame)
    assert isinstance(onward, router.Onward) and onward.next_hop == "b" and onward.frame.ttl == 4
    assert router.decide("c", routes, frame) == router.ToProgram(originated=False)
    assert router.decide("a", routes, TunnelFrame("a", 1, "a", CLOSE, 5)) == \
        router.ToProgram(originated=True)
    assert router.decide("b", {}, frame) == router.Dropped("no_route")
    assert router.decide("b", routes, TunnelFrame("a", 1, "c", OPEN, 1)) == \
        router.Dropped("ttl_expired")


def test_malformed_tunnel_frames_raise_a_remote_error():
    for payload in (b"", b"\x01", router.encode(TunnelFrame("a", 1, "c", DATA, 5))[:-1]):
        with pytest.raises(RemoteProtocolError):
            router.decode(payload, "b")


async def test_node_services_exchange_whole_frames_across_hops_and_see_the_close():
    network = FakeNetwork()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            a = TunnelService("a", network.transport("a"), {"b": "b", "c": "b"}, None)
            b = TunnelService("b", network.transport("b"), {"a": "a", "c": "c"}, None)
            c = TunnelService("c", network.transport("c"), {"a": "b", "b": "b"}, None)
            for service in (a, b, c):
                await service.bind()
                nursery.start_soon(service.serve)
            dialled = await a.connect_frames("c", "kme")
            accepted = await c.accept_frames("a", "kme")
            messages = [bytes([i]) * (i * 1000 + 1) for i in range(20)]
            for message in messages:
                await dialled.send(message)
            assert [await accepted.receive() for _ in messages] == messages
            await accepted.send(b"answer")
            assert await dialled.receive() == b"answer"
            await accepted.aclose()
            with pytest.raises(ConnectionError):
                await dialled.receive()
            stranger = await a.connect_frames("c", "nobody-accepts-this")  # backlog, bounded
            await stranger.send(b"x")
            for _ in range(100):  # the open crosses b first
                if c.counters["tunnel_service_channels"] == 2:
                    break
                await trio.sleep(0.01)
            assert c.counters["tunnel_service_channels"] == 2
            nursery.cancel_scope.cancel()


async def test_a_program_that_does_not_read_loses_its_connection_not_the_node(monkeypatch):
    from nodes.services.tunnel import service as tunnel_service

    monkeypatch.setattr(tunnel_service, "MAX_QUEUED", 4)
    network = FakeNetwork()
    accepted = []

    async def sleepy_server(task_status=trio.TASK_STATUS_IGNORED):
        async def handle(stream):
            accepted.append(stream)
            await trio.sleep_forever()  # never reads

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(handle, listeners, handler_nursery=nursery)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(sleepy_server)
            a, b, ports = await neighbours(nursery, network, port)
            stream = await trio.open_tcp_stream("127.0.0.1", ports["b"])
            chunk = b"x" * 65536
            with pytest.raises(trio.BrokenResourceError):  # closed at both ends in the end
                for _ in range(10_000):  # until the node gives up on the stalled program
                    await stream.send_all(chunk)
            assert b.counters["tunnel_overflow"] == 1
            assert not b._locals and not a._locals  # both nodes let go of the connection
            nursery.cancel_scope.cancel()
