"""An app channel on which every message is sealed and checked (Wegman-Carter, NACK/resend).

The trio shell around ``AuthenticatedLink`` for a ``nodes.transport.Channel``: ``post``
seals and queues (never blocks), ``messages`` yields what authenticated cleanly, in order
(an authenticated body that is no message raises ``MalformedMessage``: the peer's fault), and
``run_timer`` repeats NACKs that went unanswered, sleeping until the link's next deadline.
Used by every QKD app.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator

import msgspec
import trio

from nodes.errors import MalformedMessage
from nodes.qkd import messages as m
from nodes.qkd.auth import Authenticator
from nodes.qkd.auth_channel import AuthenticatedLink
from nodes.transport import Channel


class SecureChannel:
    """The app channel with every message sealed and checked by an ``AuthenticatedLink``."""

    def __init__(self, channel: Channel, authenticator: Authenticator,
                 decoder: msgspec.msgpack.Decoder = m.decoder) -> None:
        self.channel = channel
        self.link = AuthenticatedLink(authenticator)
        self.decoder = decoder
        self._deadline_changed = trio.Event()

    def post(self, message: object) -> None:
        self.channel.post(self.link.send(m.encoder.encode(message)))

    async def messages(self) -> AsyncIterator[object]:
        while True:
            frame = await self.channel.receive()
            deadline = self.link.next_deadline()
            bodies, frames = self.link.receive(frame, time.monotonic())
            if self.link.next_deadline() != deadline:
                self._deadline_changed.set()
            for reply in frames:
                self.channel.post(reply)
            for body in bodies:
                try:
                    message = self.decoder.decode(body)
                except msgspec.DecodeError as exc:
                    raise MalformedMessage(f"authenticated frame is no message: {exc}",
                                           peer=self.channel.peer) from None
                yield message

    async def run_timer(self) -> None:
        """Repeat unanswered NACKs at the link's deadlines (raises ``LinkFailed`` in the end)."""
        while True:
            deadline = self.link.next_deadline()
            with trio.move_on_after(max(0.0, deadline - time.monotonic())
                                    if deadline is not None else math.inf):
                await self._deadline_changed.wait()
                self._deadline_changed = trio.Event()
                continue
            for frame in self.link.handle_timer(time.monotonic()):
                self.channel.post(frame)
