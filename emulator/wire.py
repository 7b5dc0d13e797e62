"""Length-prefixed MessagePack framing used on every qnet TCP connection.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of MessagePack.
This module only cuts a byte stream into frames and back (sans-I/O ``FrameBuffer``, thin trio
``FramedStream``); which message types a frame may hold is decided by the protocol module that
owns the connection (``emulator.daemon.protocol`` for node<->daemon, ``nodes.transport`` for
node<->node).

Memory a peer can make us hold is bounded: reads are at most ``CHUNK`` bytes, a partial frame's
buffer grows only as its bytes arrive (an announced length is never preallocated), and a header
announcing more than the stream's ``max_frame`` is rejected before any of its body is kept.
Servers start unauthenticated peers with a small limit and ``raise_limit`` after the hello.
"""

from __future__ import annotations

import struct
from collections import deque

import trio

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
CHUNK = 65536  # bytes asked of the socket per read


class FrameTooLarge(Exception):
    """The peer announced a frame longer than the connection's limit (remote protocol error)."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class TruncatedFrame(trio.BrokenResourceError):
    """The peer closed the connection in the middle of a frame (a broken stream, not EOF)."""

    def __init__(self, buffered: int) -> None:
        super().__init__(f"connection closed with {buffered} bytes of an incomplete frame")
        self.buffered = buffered


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return HEADER.pack(len(payload)) + payload


class FrameBuffer:
    """Accumulates received bytes and yields complete frame payloads (sans-I/O).

    ``feed`` takes whatever the socket returned; ``frames`` returns every complete payload
    so far. A header announcing more than ``max_frame`` bytes raises ``FrameTooLarge`` at
    once, before the body is buffered; the buffer is then poisoned (every later call raises).
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._error: FrameTooLarge | None = None
        self.peak = 0  # most bytes ever buffered at once

    def clear(self) -> None:
        """Drop whatever is buffered (the connection is closing)."""
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)

    def raise_limit(self, max_frame: int) -> None:
        """Allow frames up to ``max_frame`` from now on (e.g. once the peer is authenticated)."""
        if max_frame < self.max_frame:
            raise ValueError(f"raise_limit({max_frame}) would lower the limit {self.max_frame}")
        self.max_frame = max_frame

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._buffer += data
        self.peak = max(self.peak, len(self._buffer))

    def frames(self) -> list[bytes]:
        if self._error is not None:
            raise self._error
        out: list[bytes] = []
        buf = self._buffer
        offset = 0
        while len(buf) - offset >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, offset)
            if length > self.max_frame:
                del buf[:]
                self._error = FrameTooLarge(length, self.max_frame)
                raise self._error
            end = offset + HEADER.size + length
            if len(buf) < end:
                break
            out.append(bytes(buf[offset + HEADER.size : end]))
            offset = end
        if offset:
            del buf[:offset]
        return out


class FramedStream:
    """A trio stream that sends and receives whole frames, holding at most one partial frame
    (bounded by ``max_frame``) plus one ``CHUNK`` of the peer's bytes."""

    def __init__(self, stream: trio.abc.Stream, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.stream = stream
        self._buffer = FrameBuffer(max_frame)
        self._pending: deque[bytes] = deque()
        self._send_lock = trio.Lock()

    @property
    def max_frame(self) -> int:
        return self._buffer.max_frame

    @property
    def peak_buffered(self) -> int:
        """Most bytes of partial frames held at once on this stream."""
        return self._buffer.peak

    def release(self) -> None:
        """Free the partial frame being received, if any (the stream is being abandoned)."""
        self._buffer.clear()
        self._pending.clear()

    def raise_limit(self, max_frame: int) -> None:
        """Accept frames up to ``max_frame`` bytes from now on (never lowers the limit)."""
        self._buffer.raise_limit(max_frame)

    async def send(self, payload: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(frame(payload))

    async def receive(self) -> bytes | None:
        """Next frame payload, or None when the peer closed the connection between frames.

        Raises ``FrameTooLarge`` for an oversize announced length and ``TruncatedFrame`` (a
        ``trio.BrokenResourceError``) when the peer closes in the middle of a frame."""
        while not self._pending:
            data = await self.stream.receive_some(CHUNK)
            if not data:
                if self._buffer.buffered:
                    raise TruncatedFrame(self._buffer.buffered)
                return None
            self._buffer.feed(data)
            self._pending.extend(self._buffer.frames())
        return self._pending.popleft()

    async def aclose(self) -> None:
        await self.stream.aclose()
