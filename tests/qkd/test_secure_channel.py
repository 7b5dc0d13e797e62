"""SecureChannel's trio shell: a NACK that goes unanswered is repeated at the link's own
deadline (the timer sleeps until then, it does not poll), and an authentic body that is no
message is the peer's fault."""

from __future__ import annotations

import time

import pytest
import trio

from nodes.errors import MalformedMessage
from nodes.qkd import messages as m
from nodes.qkd.auth import Authenticator
from nodes.qkd.auth_channel import RENACK_INTERVAL_S
from nodes.qkd.secure_channel import SecureChannel


class FakeChannel:
    def __init__(self) -> None:
        self.send, self.inbox = trio.open_memory_channel(10)
        self.posted: list[bytes] = []
        self.peer = "alice"

    async def receive(self) -> bytes:
        return await self.inbox.receive()

    def post(self, payload: bytes) -> None:
        self.posted.append(payload)


def pair() -> tuple[SecureChannel, SecureChannel, FakeChannel]:
    a = SecureChannel(FakeChannel(), Authenticator("initiator", b"p" * 16, bootstrap_keys=64))
    channel = FakeChannel()
    b = SecureChannel(channel, Authenticator("responder", b"p" * 16, bootstrap_keys=64))
    return a, b, channel


async def test_unanswered_nack_is_repeated_at_the_deadline() -> None:
    a, b, channel = pair()
    frame = bytearray(a.link.send(m.encoder.encode(m.SourceFinished(pulses=1))))
    frame[-1] ^= 1  # tampered: fails authentication
    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.run_timer)

        async def read() -> None:
            async for _ in b.messages():
                pass

        nursery.start_soon(read)
        await channel.send.send(bytes(frame))
        with trio.fail_after(5 * RENACK_INTERVAL_S):
            while len(channel.posted) < 2:  # the first NACK at once, the repeat at the deadline
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert time.monotonic() - t0 >= RENACK_INTERVAL_S * 0.9
    assert b.link.rejected == 1


async def test_an_authentic_body_that_is_no_message_is_malformed() -> None:
    a, b, channel = pair()
    await channel.send.send(a.link.send(b"\xc1 not msgpack"))
    with pytest.raises(MalformedMessage):
        async for _ in b.messages():
            pass
