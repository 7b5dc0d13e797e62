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
from collections.abc import Iterable

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


class _Batch:
    """Frames that will go out in one ``send_all``, and whether (and how) that happened."""

    __slots__ = ("failed", "frames", "sent")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.sent = False
        self.failed = False


class FramedStream:
    """A trio stream that sends and receives whole frames, holding at most one partial frame
    (bounded by ``max_frame``) plus one ``CHUNK`` of the peer's bytes."""

    def __init__(self, stream: trio.abc.Stream, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.stream = stream
        self._buffer = FrameBuffer(max_frame)
        self._pending: deque[bytes] = deque()
        self._send_lock = trio.Lock()
        self._batch = _Batch()  # frames queued for the next send_all

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
        await self.send_many((payload,))

    async def send_many(self, payloads: Iterable[bytes]) -> None:
        """Send frames in order; frames other tasks queue while a send is under way go
        together in one ``send_all`` (one system call for replies and pushes due together).

        Returns once these frames are written; a cancelled sender's unsent frames are dropped,
        and if the batch holding them failed this raises ``trio.BrokenResourceError``."""
        batch = self._batch
        mine = [frame(payload) for payload in payloads]
        batch.frames.extend(mine)
        try:
            # uncontended: no checkpoint of its own (send_all has one); a free lock has no
            # waiters, so this batch holds only our frames
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            try:
                await self._send_lock.acquire()
            except BaseException:
                if batch is self._batch:  # not taken by another sender: unqueue ours
                    batch.frames = [f for f in batch.frames if not any(f is m for m in mine)]
                raise
        try:
            if batch.sent:  # an earlier sender wrote our frames with its own
                if batch.failed:
                    raise trio.BrokenResourceError("the send holding this frame failed")
                return
            self._batch = _Batch()
            try:
                await self.stream.send_all(b"".join(batch.frames))
            except BaseException:
                batch.failed = True
                raise
            finally:
                batch.sent = True
        finally:
            self._send_lock.release()

    @property
    def has_pending(self) -> bool:
        """A complete frame is already received: the next ``receive`` returns it at once."""
        return bool(self._pending)

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
