"""FramedStream.send_many: frames queued by other tasks while a send is under way go out
together in one ``send_all``, in call order; a cancelled sender's frames are not sent; a failed
send fails every sender whose frames it held."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from emulator.wire import FrameBuffer, FramedStream, frame


class Recording(trio.abc.HalfCloseableStream):
    """A stream that records each ``send_all`` and blocks it until ``gate`` is set."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.gate = trio.Event()
        self.fail = False

    async def send_all(self, data) -> None:
        await self.gate.wait()
        if self.fail:
            raise trio.BrokenResourceError("peer gone")
        self.calls.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes=None) -> bytes:
        raise NotImplementedError

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def frames_of(data: bytes) -> list[bytes]:
    buffer = FrameBuffer()
    buffer.feed(data)
    return buffer.frames()


async def test_concurrent_sends_share_one_send_all_in_order():
    stream = Recording()
    framed = FramedStream(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(framed.send, b"first")  # takes the lock, blocks in send_all
        await trio.testing.wait_all_tasks_blocked()
        for i in range(5):
            nursery.start_soon(framed.send_many, [b"a%d" % i, b"b%d" % i])
            await trio.testing.wait_all_tasks_blocked()
        stream.gate.set()
    assert [frames_of(c) for c in stream.calls] == [
        [b"first"], [x for i in range(5) for x in (b"a%d" % i, b"b%d" % i)]]


async def test_lone_send_is_one_frame():
    stream = Recording()
    stream.gate.set()
    framed = FramedStream(stream)
    await framed.send(b"x")
    await framed.send(b"y")
    assert stream.calls == [frame(b"x"), frame(b"y")]


async def test_cancelled_waiting_sender_sends_nothing():
    stream = Recording()
    framed = FramedStream(stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(framed.send, b"first")
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await framed.send(b"cancelled")
        nursery.start_soon(framed.send, b"kept")
        await trio.testing.wait_all_tasks_blocked()
        stream.gate.set()
    assert b"".join(stream.calls) == frame(b"first") + frame(b"kept")


async def test_failed_send_fails_every_sender_it_held():
    stream = Recording()
    framed = FramedStream(stream)
    failures: list[str] = []

    async def send(payload: bytes) -> None:
        try:
            await framed.send(payload)
        except trio.BrokenResourceError:
            failures.append(payload.decode())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send, b"first")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(send, b"second")
        nursery.start_soon(send, b"third")
        await trio.testing.wait_all_tasks_blocked()
        stream.fail = True
        stream.gate.set()
    assert sorted(failures) == ["first", "second", "third"]
    assert stream.calls == []
