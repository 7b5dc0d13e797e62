"""A node's one connection to the quantum daemon.

``open_daemon`` connects, authenticates with the node's token and runs a reader task that
routes replies to the request that awaits them (by id) and pushed ``Detections`` to the
per-link channel of the app that opened the detector, and pushed ``PayloadArrived`` (flying
qubits) to the channel of the link they arrived on. Errors from the daemon raise
``DaemonError`` in the requesting app.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from emulator.daemon import protocol as p
from emulator.wire import FramedStream


class DaemonError(Exception):
    """The daemon refused a request (its error code and message)."""

    def __init__(self, error: p.Error) -> None:
        super().__init__(f"daemon error {error.code}: {error.message}")
        self.code = error.code


class _Pending:
    """Slot for the reply to one request, and the event its requester waits on (cheaper
    than a memory channel per request)."""

    __slots__ = ("arrived", "reply")

    def __init__(self) -> None:
        self.arrived = trio.Event()
        self.reply: object = None


class DaemonClient:
    def __init__(self, framed: FramedStream, welcome: p.Welcome) -> None:
        self.framed = framed
        self.welcome = welcome
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Pending] = {}
        self._detections: dict[str, trio.MemorySendChannel] = {}
        self._payloads: dict[str, trio.MemorySendChannel] = {}

    async def request(self, message_type: type, **fields: object) -> object:
        """Send one request and return its reply; raises ``DaemonError`` on an error reply."""
        request_id = next(self._ids)
        pending = self._waiting[request_id] = _Pending()
        try:
            await self.framed.send(p.encoder.encode(message_type(id=request_id, **fields)))
            await pending.arrived.wait()
        finally:
            del self._waiting[request_id]
        reply = pending.reply
        if isinstance(reply, p.Error):
            raise DaemonError(reply)
        return reply

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
            if isinstance(message, p.Detections):
                await self._detections[message.link].send(message)
            elif isinstance(message, p.PayloadArrived):
                await self._payloads[message.link].send(message)
            elif isinstance(message, p.PayloadsArrived):
                for arrival in message.arrivals:
                    await self._payloads[message.link].send(arrival)
            elif (pending := self._waiting.get(getattr(message, "id", None))) is not None:
                pending.reply = message
                pending.arrived.set()
            elif isinstance(message, p.Error):
                raise DaemonError(message)


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
