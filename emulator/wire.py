"""Length-prefixed MessagePack framing used on every qnet TCP connection.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of MessagePack.
This module only cuts a byte stream into frames and back (sans-I/O); which message types a
frame may hold is decided by the protocol module that owns the connection
(``emulator.daemon.protocol`` for node<->daemon, ``nodes.transport`` for node<->node).
"""

from __future__ import annotations

import struct
from collections import deque

import trio

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024


class FrameTooLarge(Exception):
    """The peer announced a frame longer than the connection's limit (remote protocol error)."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return HEADER.pack(len(payload)) + payload


class FrameBuffer:
    """Accumulates received bytes and yields complete frame payloads.

    ``feed`` takes whatever the socket returned; ``frames`` returns every complete payload
    so far. A header announcing more than ``max_frame`` bytes raises ``FrameTooLarge`` at
    once, before the body is buffered.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def frames(self) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buffer
        offset = 0
        while len(buf) - offset >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, offset)
            if length > self.max_frame:
                raise FrameTooLarge(length, self.max_frame)
            end = offset + HEADER.size + length
            if len(buf) < end:
                break
            out.append(bytes(buf[offset + HEADER.size : end]))
            offset = end
        if offset:
            del buf[:offset]
        return out


class FramedStream:
    """A trio stream that sends and receives whole frames."""

    def __init__(self, stream: trio.abc.Stream, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.stream = stream
        self._buffer = FrameBuffer(max_frame)
        self._pending: deque[bytes] = deque()
        self._send_lock = trio.Lock()

    async def send(self, payload: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(frame(payload))

    async def receive(self) -> bytes | None:
        """Next frame payload, or None when the peer closed the connection cleanly."""
        while not self._pending:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self._buffer.feed(data)
            self._pending.extend(self._buffer.frames())
        return self._pending.popleft()

    async def aclose(self) -> None:
        await self.stream.aclose()
