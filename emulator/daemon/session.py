"""Node connections to the daemon: framing, hello/token authentication, request dispatch.

``Sessions.handle`` serves one TCP connection: a small frame limit and ``hello_timeout_s``
until the node's ``Hello`` is authenticated, at most ``max_unauthenticated`` such connections
at a time (more are closed at once), then requests dispatched through a table keyed by message
type. The requests of one read are answered together: each reply is queued, and the queue
is written in one ``send_all`` when no received frame is left (or before a push, in order).
Every framing or decoding error (including nesting deep enough to hit the recursion
limit) ends that connection only, with a fatal ``Error``; it is counted, and logged a few
times per reason, never as a traceback per frame. Closed connections are forgotten.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hmac
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import trio

from emulator.daemon import protocol as p
from emulator.wire import FramedStream, FrameTooLarge, TruncatedFrame

log = logging.getLogger("qnet.daemon")

CLOSE_DRAIN_S = 0.5  # after a fatal error: read and discard this long so the Error is not reset
LOGGED_PER_REASON = 5  # rejections logged in full per reason; after that every power of ten
TRIM_AFTER_BYTES = 1 << 20  # a closed connection that buffered this much: return it to the OS
# requests whose handler may wait (a source's end, the detector's lock): the replies queued
# before them are written first
WAITING_REQUESTS = (p.SourceStop, p.DetectorOpen)


@dataclass(frozen=True)
class SessionLimits:
    """What an unauthenticated peer may cost: wall seconds to send its hello, the largest
    frame it may send before that, and how many such connections may be open at once."""

    hello_timeout_s: float = 10.0
    unauthenticated_max_frame: int = 4096
    max_unauthenticated: int = 64
    max_frame: int = p.MAX_FRAME  # after authentication


Handler = Callable[["Connection", Any], Awaitable[msgspec.Struct | None]]


class Connection:
    """One node's connection: its authenticated name, what it sent and was sent, its tasks."""

    def __init__(self, framed: FramedStream, sessions: Sessions) -> None:
        self.framed = framed
        self.node: str | None = None
        self.sent: Counter[str] = Counter()  # message tag -> count sent on this connection
        self.received: Counter[str] = Counter()
        self.closed = False
        self._sessions = sessions
        self._queued: list[bytes] = []  # encoded replies not yet written (``queue``)
        self._queued_tags: list[str] = []
        self.tasks: trio.Nursery | None = None  # this connection's long polls (by Sessions)

    def queue(self, message: msgspec.Struct) -> None:
        """Queue a reply, written with the next ``flush`` or ``send`` (in order): the replies
        to every request of one read go out in one ``send_all``."""
        self._queued.append(p.encoder.encode(message))
        self._queued_tags.append(type(message).__struct_config__.tag)

    async def flush(self) -> bool:
        """Write the queued replies; False (and marked closed) if the peer has gone."""
        if not self._queued:
            return not self.closed
        return await self._write([], [])

    async def send(self, message: msgspec.Struct) -> bool:
        """Send one message after the queued replies; False (and marked closed) if the peer
        has gone."""
        return await self._write([p.encoder.encode(message)],
                                 [type(message).__struct_config__.tag])

    async def _write(self, frames: list[bytes], tags: list[str]) -> bool:
        if self.closed:
            return False
        if self._queued:
            frames, tags = self._queued + frames, self._queued_tags + tags
            self._queued, self._queued_tags = [], []
        try:
            await self.framed.send_many(frames)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            return False
        by_node = self._sessions.sent_by_node[self.node or "?"]
        for tag in tags:
            self.sent[tag] += 1
            by_node[tag] += 1
        return True

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run a task for this connection only (cancelled when it closes)."""
        assert self.tasks is not None, "only authenticated connections run tasks"
        self.tasks.start_soon(fn, *args)


class _Fatal(Exception):
    def __init__(self, error: p.Error) -> None:
        self.error = error


class Sessions:
    """Registry of open connections and the counters of all of them (``counters``)."""

    def __init__(self, tokens: Mapping[str, str], welcome: Callable[[str], p.Welcome],
                 handlers: Mapping[type, Handler], on_closed: Callable[[Connection], None],
                 limits: SessionLimits = SessionLimits()) -> None:
        self.tokens = dict(tokens)
        self.welcome = welcome
        self.handlers = dict(handlers)
        self.on_closed = on_closed
        self.limits = limits
        self.open: set[Connection] = set()
        self.unauthenticated = 0
        self.counters: Counter[str] = Counter()
        self.sent_by_node: defaultdict[str, Counter] = defaultdict(Counter)

    def rejected(self) -> int:
        return sum(v for k, v in self.counters.items() if k.startswith("rejected_"))

    def _reject(self, reason: str, detail: str) -> None:
        """Count a rejected connection; log the first few of each reason, then sparsely."""
        key = f"rejected_{reason}"
        self.counters[key] += 1
        n = self.counters[key]
        if n <= LOGGED_PER_REASON or math.log10(n).is_integer():
            log.info("closing a connection (%s, #%d of this kind): %s", reason, n, detail)

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one node connection; never raises (a broken peer costs only itself)."""
        self.counters["connections"] += 1
        if self.unauthenticated >= self.limits.max_unauthenticated:
            self._reject("too_many", f"{self.unauthenticated} unauthenticated already open")
            await stream.aclose()
            return
        conn = Connection(FramedStream(stream, self.limits.unauthenticated_max_frame), self)
        self.open.add(conn)
        self.unauthenticated += 1
        try:
            async with stream:
                try:
                    await self._converse(conn)
                except _Fatal as fatal:
                    self._reject(fatal.error.code, f"{conn.node or 'unauthenticated'}: "
                                 f"{fatal.error.message}")
                    await conn.send(fatal.error)
                    await _close_gracefully(stream)
        except TruncatedFrame as exc:
            self._reject("truncated", str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # a daemon bug in one request: that connection only, loudly
            self.counters["internal_errors"] += 1
            log.exception("connection of %s failed", conn.node)
        finally:
            conn.closed = True
            if conn.node is None:
                self.unauthenticated -= 1
            self.open.discard(conn)
            if conn.node is not None:
                self.on_closed(conn)
            conn.framed.release()
            if conn.framed.peak_buffered >= TRIM_AFTER_BYTES:
                trim_heap()

    async def _receive(self, conn: Connection) -> Any:
        try:
            payload = await conn.framed.receive()
        except FrameTooLarge as exc:
            raise _Fatal(p.Error("too_large", str(exc), fatal=True)) from None
        if payload is None:
            return None
        try:
            request = p.request_decoder.decode(payload)
        except (msgspec.DecodeError, RecursionError) as exc:
            message = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise _Fatal(p.Error("bad_frame", f"not a request: {message}", fatal=True)) from None
        conn.received[type(request).__struct_config__.tag] += 1
        return request

    async def _converse(self, conn: Connection) -> None:
        with trio.move_on_after(self.limits.hello_timeout_s):
            hello = await self._receive(conn)
            if hello is None:
                return
            self._authenticate(conn, hello)
        if conn.node is None:
            raise _Fatal(p.Error("unauthenticated", "no hello in time", fatal=True))
        self.unauthenticated -= 1
        self.counters["authenticated"] += 1
        conn.framed.raise_limit(self.limits.max_frame)
        await conn.send(self.welcome(conn.node))
        pending: BaseException | None = None
        async with trio.open_nursery() as polls:
            conn.tasks = polls
            try:
                while True:
                    if not conn.framed.has_pending:  # the read's requests are all answered
                        await conn.flush()
                    request = await self._receive(conn)
                    if request is None:
                        await conn.flush()
                        break
                    if isinstance(request, WAITING_REQUESTS):
                        await conn.flush()
                    reply = await self._dispatch(conn, request)
                    if reply is not None:
                        conn.queue(reply)
            except (_Fatal, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                pending = exc  # re-raised outside the nursery, unwrapped
            polls.cancel_scope.cancel()
        if pending is not None:
            raise pending

    def _authenticate(self, conn: Connection, hello: Any) -> None:
        if not isinstance(hello, p.Hello):
            raise _Fatal(p.Error("unauthenticated", "the first frame must be hello",
                                 id=getattr(hello, "id", None), fatal=True))
        if hello.version != p.PROTOCOL_VERSION:
            raise _Fatal(p.Error("bad_version", f"daemon speaks version {p.PROTOCOL_VERSION}, "
                                 f"not {hello.version}", fatal=True))
        expected = self.tokens.get(hello.node)
        # compare against something even for unknown nodes, so timing does not tell them apart
        ok = hmac.compare_digest((expected or "\x00" * 32).encode(), hello.token.encode())
        if expected is None or not ok:
            raise _Fatal(p.Error("unauthenticated", "unknown node or wrong token", fatal=True))
        conn.node = hello.node

    async def _dispatch(self, conn: Connection, request: Any) -> msgspec.Struct | None:
        handler = self.handlers.get(type(request))
        if handler is None:
            return p.Error("not_allowed", f"{type(request).__struct_config__.tag} is not "
                           "accepted here", id=getattr(request, "id", None))
        field = non_finite_field(request)
        if field is not None:
            return p.Error("bad_request", f"{field} must be finite", id=request.id)
        return await handler(conn, request)


def non_finite_field(message: msgspec.Struct) -> str | None:
    """Name of the first field holding a NaN or infinity (also inside lists), else None.
    Only fields whose declared type can hold a float are looked at (``float_fields``)."""
    for name in float_fields(type(message)):
        value = getattr(message, name)
        values = value if isinstance(value, (list, tuple)) else (value,)
        if any(isinstance(x, float) and not math.isfinite(x) for x in values):
            return name
    return None


@functools.cache
def float_fields(struct_type: type) -> tuple[str, ...]:
    """Fields of ``struct_type`` that can hold a float, directly or as an item of a list or
    tuple (computed once per type from msgspec's type info): the only ones worth scanning."""
    return tuple(f.name for f in msgspec.inspect.type_info(struct_type).fields
                 if _may_hold_float(f.type, depth=0))


def _may_hold_float(info: msgspec.inspect.Type, depth: int) -> bool:
    if isinstance(info, (msgspec.inspect.FloatType, msgspec.inspect.AnyType)):
        return True
    if isinstance(info, msgspec.inspect.UnionType):
        return any(_may_hold_float(t, depth) for t in info.types)
    if depth == 0 and isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.VarTupleType)):
        return _may_hold_float(info.item_type, depth + 1)
    if depth == 0 and isinstance(info, msgspec.inspect.TupleType):
        return any(_may_hold_float(t, depth + 1) for t in info.item_types)
    return False


def _libc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim with
        return None


_MALLOC_TRIM = _libc_trim()


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``). A large partial frame
    grows on the heap, and glibc keeps freed heap pages mapped: without this, peers that
    once sent big partial frames would leave the daemon's RSS high after they closed."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


async def _close_gracefully(stream: trio.SocketStream) -> None:
    """Half-close and drain briefly, so unread input does not turn our close into a reset
    that would discard the Error frame before the peer reads it."""
    with trio.move_on_after(CLOSE_DRAIN_S):
        try:
            await stream.send_eof()
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
