"""Framing (emulator.wire): round trips, byte-by-byte delivery, limits checked before any
allocation, EOF between and inside frames, bounded reads."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from emulator.wire import (
    CHUNK,
    HEADER,
    FrameBuffer,
    FramedStream,
    FrameTooLarge,
    TruncatedFrame,
    frame,
)

PAYLOADS = [b"", b"x", bytes(range(256)) * 3, b"\x00" * 70_000]


def pair(max_frame: int = 1 << 20) -> tuple[FramedStream, FramedStream]:
    a, b = trio.testing.memory_stream_pair()
    return FramedStream(a, max_frame), FramedStream(b, max_frame)


async def test_round_trip_in_order():
    a, b = pair()
    async with trio.open_nursery() as nursery:
        async def send_all() -> None:
            for payload in PAYLOADS:
                await a.send(payload)
            await a.aclose()

        nursery.start_soon(send_all)
        got = [await b.receive() for _ in PAYLOADS]
        assert got == PAYLOADS
        assert await b.receive() is None  # clean EOF between frames


def test_split_byte_by_byte():
    buf = FrameBuffer(1 << 20)
    data = b"".join(frame(x) for x in PAYLOADS[:3])
    got: list[bytes] = []
    for i in range(len(data)):
        buf.feed(data[i : i + 1])
        got.extend(buf.frames())
        assert buf.buffered <= max(len(x) for x in PAYLOADS) + HEADER.size
    assert got == PAYLOADS[:3]
    assert buf.buffered == 0


async def test_stream_delivered_one_byte_at_a_time():
    send, receive = trio.testing.memory_stream_one_way_pair()
    framed = FramedStream(trio.StapledStream(send, receive), 1 << 20)
    payloads = [*PAYLOADS[:3], b"\x07" * 5000]
    data = b"".join(frame(x) for x in payloads)

    async def trickle() -> None:
        for i in range(len(data)):
            await send.send_all(data[i : i + 1])
        await send.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        assert [await framed.receive() for _ in payloads] == payloads
        assert await framed.receive() is None


def test_oversize_header_rejected_before_its_body_is_kept():
    buf = FrameBuffer(1024)
    buf.feed(HEADER.pack(0xFFFFFFFF) + b"abc")
    with pytest.raises(FrameTooLarge) as info:
        buf.frames()
    assert (info.value.length, info.value.limit) == (0xFFFFFFFF, 1024)
    assert buf.buffered == 0
    with pytest.raises(FrameTooLarge):  # poisoned: nothing more is accepted
        buf.feed(b"more")


def test_partial_frame_grows_only_with_arrived_bytes():
    buf = FrameBuffer(10_000_000)
    buf.feed(HEADER.pack(9_000_000))
    assert buf.frames() == [] and buf.buffered == HEADER.size
    buf.feed(b"\x01" * 1000)
    assert buf.frames() == [] and buf.buffered == HEADER.size + 1000


def test_limit_is_exact_and_can_be_raised_not_lowered():
    buf = FrameBuffer(4)
    buf.feed(frame(b"abcd"))
    assert buf.frames() == [b"abcd"]
    buf.raise_limit(5)
    buf.feed(frame(b"abcde"))
    assert buf.frames() == [b"abcde"]
    with pytest.raises(ValueError):
        buf.raise_limit(3)
    buf.feed(frame(b"abcdef"))
    with pytest.raises(FrameTooLarge):
        buf.frames()


async def test_stream_raise_limit_after_hello():
    a, b = pair(max_frame=16)
    b.raise_limit(1000)
    assert b.max_frame == 1000
    await a.send(b"y" * 500)
    assert await b.receive() == b"y" * 500


async def test_stream_rejects_oversize_announcement():
    send, receive = trio.testing.memory_stream_one_way_pair()
    framed = FramedStream(trio.StapledStream(send, receive), 100)
    await send.send_all(HEADER.pack(101))
    with pytest.raises(FrameTooLarge):
        await framed.receive()


async def test_eof_mid_frame_is_a_broken_stream():
    send, receive = trio.testing.memory_stream_one_way_pair()
    framed = FramedStream(trio.StapledStream(send, receive), 100)
    await send.send_all(frame(b"whole") + HEADER.pack(50) + b"half")
    await send.aclose()
    assert await framed.receive() == b"whole"
    with pytest.raises(TruncatedFrame) as info:
        await framed.receive()
    assert isinstance(info.value, trio.BrokenResourceError)
    assert info.value.buffered == HEADER.size + 4


async def test_eof_mid_header_is_a_broken_stream():
    send, receive = trio.testing.memory_stream_one_way_pair()
    framed = FramedStream(trio.StapledStream(send, receive), 100)
    await send.send_all(b"\x00\x00")
    await send.aclose()
    with pytest.raises(TruncatedFrame):
        await framed.receive()


class RecordingStream(trio.abc.Stream):
    """Wraps a stream and records the ``max_bytes`` of every read."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.asked: list[int | None] = []

    async def receive_some(self, max_bytes=None):
        self.asked.append(max_bytes)
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_reads_are_bounded_chunks():
    a, b = trio.testing.memory_stream_pair()
    recording = RecordingStream(b)
    framed = FramedStream(recording, 1 << 22)
    big = b"z" * (3 * CHUNK + 17)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, frame(big))
        assert await framed.receive() == big
    assert recording.asked and all(x is not None and x <= CHUNK for x in recording.asked)


def test_peak_and_release():
    a, _ = trio.testing.memory_stream_pair()
    framed = FramedStream(a, 1000)
    framed._buffer.feed(HEADER.pack(900) + b"x" * 500)
    assert framed._buffer.frames() == [] and framed.peak_buffered == HEADER.size + 500
    framed.release()
    assert framed._buffer.buffered == 0 and framed.peak_buffered == HEADER.size + 500
