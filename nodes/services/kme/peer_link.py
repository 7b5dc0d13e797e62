"""The trio shell of one KME-to-KME channel: (re)connects, authenticates, matches replies.

The allocator of the pair dials (``connect``), the other end accepts (``accept``); a broken
or unauthentic channel is dropped and opened again (the dialler backs off). ``request`` sends
a ``Release`` or ``Allocate`` and waits for its reply, at most ``timeout_s`` (``PeerUnavailable``
otherwise); ``notify`` queues a ``Discard`` that is sent as soon as a channel is up. Requests
from the peer are handled concurrently by ``handle``, whose reply goes back on the channel.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from nodes.services.kme.peering import (
    Ack,
    Allocated,
    Discard,
    PeerAuthError,
    PeerMessage,
    PeerSession,
    Pong,
    Refused,
    allocator_of,
)

log = logging.getLogger("qnet.kme.peer")

RECONNECT_S = 0.2  # first backoff of the dialler; doubles up to RECONNECT_MAX_S
RECONNECT_MAX_S = 5.0
HELLO_TIMEOUT_S = 10.0


class PeerUnavailable(Exception):
    """The peer KME did not answer in time (channel down, link cut, or peer restarting)."""


class FrameChannel(Protocol):
    async def send(self, payload: bytes) -> None: ...
    async def receive(self) -> bytes: ...
    async def aclose(self) -> None: ...


class PeerLink:
    """The channel from node ``me``'s KME to node ``peer``'s."""

    def __init__(self, me: str, peer: str, link_key: bytes,
                 open_channel: Callable[[], Awaitable[FrameChannel]],
                 handle: Callable[[PeerMessage], Awaitable[PeerMessage | None]],
                 timeout_s: float = 5.0) -> None:
        self.me, self.peer = me, peer
        self.dialler = allocator_of(me, peer) == me
        self._link_key = link_key
        self._open_channel = open_channel
        self._handle = handle
        self.timeout_s = timeout_s
        self.counters: Counter[str] = Counter()
        self._next_req = 0
        self._waiting: dict[int, tuple[trio.Event, list[PeerMessage]]] = {}
        self._outbox: trio.MemorySendChannel[PeerMessage] | None = None
        self._up = trio.Event()
        self._discards: list[Discard] = []
        self._inflight: set[int] = set()
        self.on_change: Callable[[bool], None] | None = None  # channel up (True) / down
        self._stalled = False  # a request went unanswered; cleared by anything from the peer
        self.on_stall: Callable[[bool], None] | None = None  # stalled (True) / answering again

    async def run(self) -> None:
        """Keep a channel to the peer open for as long as the node runs."""
        backoff = RECONNECT_S
        while True:
            try:
                channel = await self._open_channel()
                self.counters["channels_opened"] += 1
                backoff = RECONNECT_S
                await self._serve(channel)
            except* (ConnectionError, OSError, trio.BrokenResourceError,
                     trio.ClosedResourceError, PeerAuthError, trio.TooSlowError) as group:
                self.counters["channel_failures"] += 1
                log.warning("KME channel to %s: %s", self.peer, group.exceptions[0])
            finally:
                if self._up.is_set() and self.on_change is not None:
                    self.on_change(False)
                self._outbox = None
                self._up = trio.Event()
                for req in self._inflight:  # sent on that channel: no answer can come now
                    if req in self._waiting:
                        self._waiting[req][0].set()
                self._inflight.clear()
            if self.dialler:
                await trio.sleep(backoff)
                backoff = min(RECONNECT_MAX_S, 2 * backoff)

    async def _serve(self, channel: FrameChannel) -> None:
        session = PeerSession(self._link_key, self.me, self.peer, self.dialler)
        try:
            with trio.fail_after(HELLO_TIMEOUT_S):
                await channel.send(session.hello())
                session.on_hello(await channel.receive())
            send, outbox = trio.open_memory_channel[PeerMessage](math.inf)
            async with trio.open_nursery() as nursery:
                async def writer() -> None:
                    async for message in outbox:
                        await channel.send(session.seal(message))

                async def answer(message: PeerMessage) -> None:
                    try:
                        reply = await self._handle(message)
                    except Exception:  # our bug or our disk: the peer's request times out
                        self.counters["handler_errors"] += 1
                        log.exception("KME %s: handling %s from %s failed", self.me,
                                      type(message).__name__, self.peer)
                        return
                    if reply is not None and self._outbox is send:
                        send.send_nowait(reply)

                nursery.start_soon(writer)
                self._outbox = send
                for discard in self._discards:
                    send.send_nowait(discard)
                self._discards.clear()
                self._up.set()
                log.info("KME channel to %s up", self.peer)
                if self.on_change is not None:
                    self.on_change(True)
                while True:
                    message = session.open(await channel.receive())
                    self.counters["received"] += 1
                    self.stalled = False
                    if isinstance(message, Ack | Allocated | Refused | Pong):
                        waiting = self._waiting.get(message.req)
                        if waiting is not None:
                            waiting[1].append(message)
                            waiting[0].set()
                    else:
                        nursery.start_soon(answer, message)
        finally:
            with trio.CancelScope(shield=True):
                await channel.aclose()

    @property
    def stalled(self) -> bool:
        return self._stalled

    @stalled.setter
    def stalled(self, value: bool) -> None:
        if value != self._stalled:
            self._stalled = value
            if self.on_stall is not None:
                self.on_stall(value)

    async def request(self, build: Callable[[int], PeerMessage]) -> PeerMessage:
        """Send ``build(req)`` and return the peer's reply (``PeerUnavailable`` after
        ``timeout_s``, or when the channel breaks before the reply came)."""
        self._next_req += 1
        req = self._next_req
        event, replies = self._waiting[req] = (trio.Event(), [])
        try:
            with trio.move_on_after(self.timeout_s):
                while self._outbox is None:  # (re-read: a channel may break meanwhile)
                    await self._up.wait()
                self._outbox.send_nowait(build(req))
                self._inflight.add(req)
                await event.wait()
            if not replies:
                self.counters["requests_unanswered"] += 1
                self.stalled = True
                raise PeerUnavailable(f"no answer from the KME of {self.peer} "
                                      f"within {self.timeout_s:g} s")
            return replies[0]
        finally:
            del self._waiting[req]
            self._inflight.discard(req)

    def notify(self, message: Discard) -> None:
        """Send ``message`` now if a channel is up, else with the next one."""
        if self._outbox is not None:
            self._outbox.send_nowait(message)
        else:
            self._discards.append(message)
