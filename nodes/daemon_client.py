"""A node's one connection to the quantum daemon.

``open_daemon`` connects, authenticates with the node's token and runs a reader task that
routes replies to the request that awaits them (by id) and pushed ``Detections`` to the
per-link channel of the app that opened the detector, and pushed ``PayloadArrived`` (flying
qubits) to the channel of the link they arrived on. Errors from the daemon raise
``DaemonError`` in the requesting app. ``request_many`` sends several requests in one write
and waits once for all their replies; requests of concurrent tasks that queue while a write is
under way go out together with the next one (``FramedStream.send_many``).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import trio

from emulator.daemon import protocol as p
from emulator.wire import FramedStream


class DaemonError(Exception):
    """The daemon refused a request (its error code and message)."""

    def __init__(self, error: p.Error) -> None:
        super().__init__(f"daemon error {error.code}: {error.message}")
        self.code = error.code


class _Group:
    """The replies to requests sent together, and the one event their requester waits on
    (set when the last one arrived: one wake-up per group, not per request)."""

    __slots__ = ("arrived", "left", "replies")

    def __init__(self, n: int) -> None:
        self.arrived = trio.Event()
        self.left = n
        self.replies: list[object] = [None] * n


class DaemonClient:
    def __init__(self, framed: FramedStream, welcome: p.Welcome) -> None:
        self.framed = framed
        self.welcome = welcome
        self._ids = itertools.count(1)
        self._last_id = 0
        self._waiting: dict[int, tuple[_Group, int]] = {}  # request id -> its group, index
        self._detections: dict[str, trio.MemorySendChannel] = {}
        self._payloads: dict[str, trio.MemorySendChannel] = {}

    async def request(self, message_type: type, **fields: object) -> object:
        """Send one request and return its reply; raises ``DaemonError`` on an error reply."""
        (reply,) = await self.request_many([(message_type, fields)])
        if isinstance(reply, p.Error):
            raise DaemonError(reply)
        return reply

    async def request_many(self, requests: Sequence[tuple[type, Mapping[str, object]]]
                           ) -> list[object]:
        """Send several requests in one write (the daemon answers them in one write too) and
        return their replies in order, an ``Error`` in place of each refused one (per request:
        the others still run). Requests other tasks send meanwhile join the same write."""
        group = _Group(len(requests))
        frames = []
        ids = []
        for i, (message_type, fields) in enumerate(requests):
            request_id = next(self._ids)
            ids.append(request_id)
            self._waiting[request_id] = (group, i)
            frames.append(p.encoder.encode(message_type(id=request_id, **fields)))
        self._last_id = ids[-1] if ids else self._last_id
        try:
            if frames:
                await self.framed.send_many(frames)
                await group.arrived.wait()
        finally:
            for request_id in ids:
                self._waiting.pop(request_id, None)
        return group.replies

    def detections(self, link: str) -> trio.MemoryReceiveChannel:
        """Channel of ``Detections`` pushed for ``link`` (open it before DetectorOpen)."""
        send, receive = trio.open_memory_channel(10_000)
        self._detections[link] = send
        return receive

    def payloads(self, link: str, buffer: int = 10_000) -> trio.MemoryReceiveChannel:
        """Channel of ``PayloadArrived`` pushed for ``link`` (open it before FlightOpen)."""
        send, receive = trio.open_memory_channel(buffer)
        self._payloads[link] = send
        return receive

    async def _read_loop(self) -> None:
        while True:
            payload = await self.framed.receive()
            if payload is None:
                raise ConnectionError("the quantum daemon closed the connection")
            message = p.reply_decoder.decode(payload)
            if isinstance(message, p.PayloadsArrived):
                channel = self._payloads[message.link]
                for arrival in message.arrivals:
                    await _put(channel, arrival)
            elif isinstance(message, p.PayloadArrived):
                await _put(self._payloads[message.link], message)
            elif isinstance(message, p.Detections):
                await self._detections[message.link].send(message)
            elif (waiting := self._waiting.pop(getattr(message, "id", None), None)) is not None:
                group, index = waiting
                group.replies[index] = message
                group.left -= 1
                if not group.left:
                    group.arrived.set()
            elif isinstance(message, p.Error) and not (
                    message.id is not None and 0 < message.id <= self._last_id):
                raise DaemonError(message)  # not the answer to a request we gave up on


async def _put(channel: trio.MemorySendChannel, message: object) -> None:
    """Hand a push on without a scheduler round trip unless its channel is full."""
    try:
        channel.send_nowait(message)
    except trio.WouldBlock:
        await channel.send(message)


@asynccontextmanager
async def open_daemon(host: str, port: int, node: str, token: str) -> AsyncIterator[DaemonClient]:
    stream = await trio.open_tcp_stream(host, port)
    framed = FramedStream(stream, p.MAX_FRAME)
    async with framed.stream:
        await framed.send(p.encoder.encode(p.Hello(p.PROTOCOL_VERSION, node, token)))
        payload = await framed.receive()
        if payload is None:
            raise ConnectionError("the quantum daemon closed the connection during hello")
        welcome = p.reply_decoder.decode(payload)
        if isinstance(welcome, p.Error):
            raise DaemonError(welcome)
        client = DaemonClient(framed, welcome)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read_loop)
            yield client
            nursery.cancel_scope.cancel()
