"""An app channel on which every message is sealed and checked (Wegman-Carter, NACK/resend).

The trio shell around ``AuthenticatedLink`` for a ``nodes.transport.Channel``: ``post``
seals and queues (never blocks), ``messages`` yields what authenticated cleanly, in order,
and ``run_timer`` repeats NACKs that went unanswered. Used by every QKD app.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import msgspec
import trio

from nodes.qkd import messages as m
from nodes.qkd.auth import Authenticator
from nodes.qkd.auth_channel import AuthenticatedLink
from nodes.transport import Channel

TIMER_PERIOD_S = 0.25


class SecureChannel:
    """The app channel with every message sealed and checked by an ``AuthenticatedLink``."""

    def __init__(self, channel: Channel, authenticator: Authenticator,
                 decoder: msgspec.msgpack.Decoder = m.decoder) -> None:
        self.channel = channel
        self.link = AuthenticatedLink(authenticator)
        self.decoder = decoder

    def post(self, message: object) -> None:
        self.channel.post(self.link.send(m.encoder.encode(message)))

    async def messages(self) -> AsyncIterator[object]:
        while True:
            frame = await self.channel.receive()
            bodies, frames = self.link.receive(frame, time.monotonic())
            for reply in frames:
                self.channel.post(reply)
            for body in bodies:
                yield self.decoder.decode(body)

    async def run_timer(self) -> None:
        while True:
            await trio.sleep(TIMER_PERIOD_S)
            for frame in self.link.handle_timer(time.monotonic()):
                self.channel.post(frame)
