"""Classical channels between node processes, through the link relays.

A node listens on its own TCP port; peers reach it only through the relay of their link
(the orchestrator tells each node, per peer, which relay endpoint to dial). Each app opens its
own named channel: the dialling side sends ``ChannelHello`` first, and the listening side hands
the connection to whoever awaits ``accept(peer, channel)``. Frames are length-prefixed
(``emulator.wire``); what is inside is the app's own msgspec messages.
"""

from __future__ import annotations

import math

import msgspec
import trio

from emulator.child_config import Endpoint
from emulator.wire import FramedStream

MAX_FRAME = 32 * 1024 * 1024
HELLO_TIMEOUT_S = 10.0


class ChannelHello(msgspec.Struct, tag="channel_hello"):
    node: str
    channel: str


_hello_encoder = msgspec.msgpack.Encoder()
_hello_decoder = msgspec.msgpack.Decoder(ChannelHello)


class Channel:
    """A framed, ordered byte-message channel to one peer."""

    def __init__(self, framed: FramedStream, peer: str, name: str) -> None:
        self.framed = framed
        self.peer = peer
        self.name = name
        self.bytes_sent = 0
        self.messages_sent = 0
        self._outbox_send, self._outbox = trio.open_memory_channel[bytes](math.inf)
        self._outbox_drained = trio.Event()

    async def send(self, payload: bytes) -> None:
        self.bytes_sent += len(payload)
        self.messages_sent += 1
        await self.framed.send(payload)

    def post(self, payload: bytes) -> None:
        """Queue ``payload`` for ``run_writer`` without blocking.

        A protocol loop that answers what it receives must post, not send: if both ends
        blocked in send while their peer's buffers are full (say after a link cut), neither
        would read again and the pair would deadlock.
        """
        self._outbox_send.send_nowait(payload)

    async def run_writer(self) -> None:
        """Send posted payloads in order until ``drain`` (run it in the app's nursery)."""
        async for payload in self._outbox:
            await self.send(payload)
        self._outbox_drained.set()

    async def drain(self) -> None:
        """Accept no more posts and wait until everything posted has been sent."""
        self._outbox_send.close()
        await self._outbox_drained.wait()

    async def receive(self) -> bytes:
        payload = await self.framed.receive()
        if payload is None:
            raise ConnectionError(f"channel {self.name!r} to {self.peer} closed by the peer")
        return payload

    async def aclose(self) -> None:
        await self.framed.aclose()


class Transport:
    """The node's classical sockets: a TCP listener for peers and the relay directory."""

    def __init__(self, node: str, host: str = "127.0.0.1") -> None:
        self.node = node
        self.host = host
        self.peers: dict[str, Endpoint] = {}
        self._arrived: dict[tuple[str, str], Channel] = {}
        self._arrival = trio.Condition()
        self.listener: trio.SocketListener | None = None
        self.udp: trio.socket.SocketType | None = None

    async def bind(self) -> Endpoint:
        """Bind the TCP listener and the UDP socket; returns this node's own endpoint."""
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.listener = listeners[0]
        self.udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await self.udp.bind((self.host, 0))
        return Endpoint(
            tcp=self.listener.socket.getsockname()[1], udp=self.udp.getsockname()[1], host=self.host
        )

    async def serve(self) -> None:
        """Accept peer connections forever (run in the node's nursery)."""
        assert self.listener is not None
        async with trio.open_nursery() as nursery:
            while True:
                stream = await self.listener.accept()
                nursery.start_soon(self._greet, stream)

    async def _greet(self, stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, MAX_FRAME)
        with trio.move_on_after(HELLO_TIMEOUT_S):
            payload = await framed.receive()
            try:
                hello = _hello_decoder.decode(payload) if payload else None
            except msgspec.DecodeError:
                hello = None
            if hello is not None:
                async with self._arrival:
                    self._arrived[(hello.node, hello.channel)] = Channel(
                        framed, hello.node, hello.channel)
                    self._arrival.notify_all()
                return
        await stream.aclose()

    async def connect(self, peer: str, channel: str) -> Channel:
        """Dial ``peer`` through its relay and open the named channel."""
        endpoint = self.peers[peer]
        stream = await trio.open_tcp_stream(endpoint.host, endpoint.tcp)
        framed = FramedStream(stream, MAX_FRAME)
        await framed.send(_hello_encoder.encode(ChannelHello(self.node, channel)))
        return Channel(framed, peer, channel)

    async def accept(self, peer: str, channel: str) -> Channel:
        """Wait for ``peer`` to open the named channel to us."""
        async with self._arrival:
            while (peer, channel) not in self._arrived:
                await self._arrival.wait()
            return self._arrived.pop((peer, channel))
