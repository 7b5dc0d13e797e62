"""The quantum daemon's TCP server: authenticates nodes, runs link sources, pushes detections.

One trio task per node connection reads requests; one task per running source processes its
frames in emulated time with ``photons.detect_frame`` and pushes ``Detections`` to the link's
receiver only (information separation, DESIGN §4). A bad frame costs only its own connection.
Wire format and rules: ``emulator.daemon.protocol`` and docs/protocol.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

import msgspec
import numpy as np
import trio

from emulator.child_config import DaemonConfig, DaemonLink
from emulator.clock import EmulatedClock
from emulator.daemon import photons
from emulator.daemon import protocol as p
from emulator.prf import intensity_thresholds
from emulator.scenario import FIBRE_GROUP_DELAY_S_PER_KM
from emulator.wire import FramedStream, FrameTooLarge

log = logging.getLogger("qnet.daemon")

HELLO_TIMEOUT_S = 10.0  # wall seconds an unauthenticated connection may stay silent
CLOSE_DRAIN_S = 0.5  # after a fatal error: read and discard this long so the Error is not reset
MAX_RECORDS_PER_MESSAGE = 400_000  # 10 bytes each: keeps a Detections frame well under MAX_FRAME
MAX_BACKLOG_RECORDS = 4_000_000  # detections buffered for a receiver that has not opened yet


class Connection:
    """One node's connection: its authenticated name and what the daemon sent it."""

    def __init__(self, framed: FramedStream, sent_by_node: dict[str, Counter]) -> None:
        self.framed = framed
        self.node: str | None = None
        self.sent: Counter[str] = Counter()  # message tag -> count sent on this connection
        self.closed = False
        self._sent_by_node = sent_by_node

    async def send(self, message: msgspec.Struct) -> bool:
        """Send one message; False (and marked closed) if the peer has gone."""
        if self.closed:
            return False
        try:
            await self.framed.send(p.encoder.encode(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            return False
        tag = type(message).__struct_config__.tag
        self.sent[tag] += 1
        self._sent_by_node[self.node or "?"][tag] += 1
        return True


@dataclass
class SourceRun:
    """A running source: the sender's PRF key and decoy settings, and its stop request."""

    key: bytes
    intensities: list[float]
    probabilities: list[float]
    t_start: float
    owner: Connection
    stop_slot: int | None = None
    wake: trio.CancelScope | None = None
    done: trio.Event = field(default_factory=trio.Event)


class LinkRuntime:
    """Physics parameters, source state, receiver sink and counters of one quantum link."""

    def __init__(self, link: DaemonLink, seed: int, clock: EmulatedClock) -> None:
        q = link.quantum
        self.link = link
        self.clock = clock
        name_word = int.from_bytes(hashlib.sha256(link.name.encode()).digest()[:8], "little")
        self.rng = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, name_word])
        self.rate_hz = q.source.rate_hz
        self.slots_per_frame = max(1, round(q.source.rate_hz * q.frame_ms / 1000.0))
        self.delay_s = link.length_km * FIBRE_GROUP_DELAY_S_PER_KM
        self.eta = float(photons.transmittance(link.length_km, q.attenuation_db_per_km)) * (
            q.detector.efficiency
        )
        self.p_dc = q.detector.dark_count_probability
        self.e_det = q.detector.misalignment
        self.source: SourceRun | None = None
        self.sink: Connection | None = None
        self.backlog: deque[p.Detections] = deque()
        self.backlog_records = 0
        self.lock = trio.Lock()  # orders pushes against DetectorOpen's flush
        self.frames = 0
        self.pulses = 0
        self.detections = 0
        self.lag_worst = 0.0
        self.lag_recent = 0.0
        self.dropped_frames = 0

    def request_stop(self) -> None:
        """Stop the source after the current slot (no-op if not running or already stopping)."""
        run = self.source
        if run is None or run.stop_slot is not None:
            return
        current = math.floor((self.clock.now() - run.t_start) * self.rate_hz)
        run.stop_slot = max(0, current + 1)
        if run.wake is not None:
            run.wake.cancel()

    async def run_source(self, run: SourceRun) -> None:
        """Process frames back to back as the emulated clock passes each one's arrival time."""
        n = self.slots_per_frame
        k = 0
        try:
            while True:
                start = k * n
                end = (k + 1) * n
                if run.stop_slot is not None:
                    end = max(start, min(end, run.stop_slot))
                due = run.t_start + end / self.rate_hz + self.delay_s
                if run.stop_slot is None:
                    with trio.CancelScope() as scope:
                        run.wake = scope
                        await self.clock.sleep_until(due)
                    run.wake = None
                    if scope.cancelled_caught:
                        continue  # stopped while waiting: recompute this frame's end
                else:
                    await self.clock.sleep_until(due)
                lag = max(0.0, self.clock.now() - due)
                found = photons.detect_frame(
                    self.rng, run.key, start, end, run.intensities, run.probabilities,
                    self.eta, self.p_dc, self.e_det,
                )
                last = run.stop_slot is not None and end >= run.stop_slot
                await self.deliver(_detection_messages(self.link.name, start, end, found, last))
                self.frames += 1
                self.pulses += end - start
                self.detections += found.slot.size
                self.lag_recent = lag
                self.lag_worst = max(self.lag_worst, lag)
                if last:
                    return
                k += 1
        except Exception:  # a bug in one link must not take the daemon down
            log.exception("link %s: source failed", self.link.name)
        finally:
            self.source = None
            run.done.set()

    async def deliver(self, messages: list[p.Detections]) -> None:
        async with self.lock:
            for i, message in enumerate(messages):
                sink = self.sink
                if sink is not None and await sink.send(message):
                    continue
                self.sink = None
                for rest in messages[i:]:
                    self._buffer(rest)
                return

    def _buffer(self, message: p.Detections) -> None:
        self.backlog.append(message)
        self.backlog_records += len(message.outcome)
        while self.backlog_records > MAX_BACKLOG_RECORDS and len(self.backlog) > 1:
            dropped = self.backlog.popleft()
            self.backlog_records -= len(dropped.outcome)
            self.dropped_frames += 1
            log.warning("link %s: receiver never opened; dropped detections %d..%d",
                        self.link.name, dropped.frame_start, dropped.frame_end)

    async def open_detector(self, conn: Connection, reply: p.DetectorOpened) -> None:
        """Reply, flush what was buffered, then route new frames to ``conn``."""
        async with self.lock:
            await conn.send(reply)
            while self.backlog:
                if not await conn.send(self.backlog[0]):
                    return
                self.backlog_records -= len(self.backlog.popleft().outcome)
            self.sink = conn


def _detection_messages(
    link: str, start: int, end: int, found: photons.FrameDetections, last: bool
) -> list[p.Detections]:
    """One frame as one or more Detections covering [start, end) contiguously."""
    m = found.slot.size
    cuts = list(range(0, m, MAX_RECORDS_PER_MESSAGE))[1:]
    bounds = [0, *cuts, m]
    messages = []
    for j in range(len(bounds) - 1):
        i0, i1 = bounds[j], bounds[j + 1]
        messages.append(p.Detections(
            link=link,
            frame_start=start if j == 0 else int(found.slot[i0]),
            frame_end=end if i1 == m else int(found.slot[i1]),
            slot=found.slot[i0:i1].astype("<u8").tobytes(),
            basis=found.basis[i0:i1].tobytes(),
            outcome=found.outcome[i0:i1].tobytes(),
            last=last and i1 == m,
        ))
    return messages


class _Fatal(Exception):
    def __init__(self, error: p.Error) -> None:
        self.error = error


class Daemon:
    """State shared by all connections: links, clock, and per-node sent-message counters."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.clock = EmulatedClock(config.t0, config.time_scale)
        self.links = {link.name: LinkRuntime(link, config.seed, self.clock) for link in config.links}
        self.sent_by_node: defaultdict[str, Counter] = defaultdict(Counter)
        self.connections: list[Connection] = []
        self.port = 0
        self.nursery: trio.Nursery | None = None

    def stats(self, request_id: int) -> p.Stats:
        links = self.links.values()
        return p.Stats(
            id=request_id,
            lag_s=max((x.lag_worst for x in links), default=0.0),
            frames=sum(x.frames for x in links),
            pulses=sum(x.pulses for x in links),
            detections=sum(x.detections for x in links),
            lag_recent_s=max((x.lag_recent for x in links), default=0.0),
            dropped_frames=sum(x.dropped_frames for x in links),
        )

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one node connection; never raises (a broken peer costs only itself)."""
        framed = FramedStream(stream, p.MAX_FRAME)
        conn = Connection(framed, self.sent_by_node)
        self.connections.append(conn)
        try:
            async with stream:
                try:
                    await self._converse(conn)
                except _Fatal as fatal:
                    log.info("closing %s: %s", conn.node or "unauthenticated", fatal.error.message)
                    await conn.send(fatal.error)
                    await _close_gracefully(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # a bug must not take the daemon down with it
            log.exception("connection of %s failed", conn.node)
        finally:
            conn.closed = True
            for link in self.links.values():
                if link.source is not None and link.source.owner is conn:
                    link.request_stop()
                if link.sink is conn:
                    link.sink = None

    async def _receive(self, conn: Connection) -> p.Request | None:
        try:
            payload = await conn.framed.receive()
        except FrameTooLarge as exc:
            raise _Fatal(p.Error("too_large", str(exc), fatal=True)) from None
        if payload is None:
            return None
        try:
            return p.request_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise _Fatal(p.Error("bad_frame", f"not a request: {exc}", fatal=True)) from None

    async def _converse(self, conn: Connection) -> None:
        with trio.move_on_after(HELLO_TIMEOUT_S):
            hello = await self._receive(conn)
            if hello is None:
                return
            self._authenticate(conn, hello)
            await conn.send(p.Welcome(p.PROTOCOL_VERSION, conn.node, self.config.t0,
                                      self.config.time_scale))
        if conn.node is None:
            raise _Fatal(p.Error("unauthenticated", "no hello in time", fatal=True))
        while True:
            request = await self._receive(conn)
            if request is None:
                return
            reply = await self._dispatch(conn, request)
            if reply is not None:
                await conn.send(reply)

    def _authenticate(self, conn: Connection, hello: p.Request) -> None:
        if not isinstance(hello, p.Hello):
            raise _Fatal(p.Error("unauthenticated", "the first frame must be hello",
                                 id=getattr(hello, "id", None), fatal=True))
        if hello.version != p.PROTOCOL_VERSION:
            raise _Fatal(p.Error("bad_version", f"daemon speaks version {p.PROTOCOL_VERSION}, "
                                 f"not {hello.version}", fatal=True))
        expected = self.config.tokens.get(hello.node)
        # compare against something even for unknown nodes, so timing does not tell them apart
        ok = hmac.compare_digest((expected or "\x00" * 32).encode(), hello.token.encode())
        if expected is None or not ok:
            raise _Fatal(p.Error("unauthenticated", "unknown node or wrong token", fatal=True))
        conn.node = hello.node

    async def _dispatch(self, conn: Connection, request: p.Request) -> msgspec.Struct | None:
        if isinstance(request, p.Hello):
            return p.Error("not_allowed", "already authenticated")
        if isinstance(request, p.StatsRequest):
            return self.stats(request.id)
        link = self.links.get(request.link)
        if link is None:
            return p.Error("unknown", f"unknown quantum link {request.link!r}", id=request.id)
        role = "a" if isinstance(request, (p.SourceStart, p.SourceStop)) else "b"
        if getattr(link.link, role) != conn.node:
            return p.Error("not_allowed", f"only {getattr(link.link, role)!r} may send "
                           f"{type(request).__struct_config__.tag} on {request.link!r}",
                           id=request.id)
        if isinstance(request, p.SourceStart):
            return self._start(conn, link, request)
        if isinstance(request, p.SourceStop):
            run = link.source
            if run is None:
                return p.Error("not_allowed", "the source is not running", id=request.id)
            link.request_stop()
            await run.done.wait()
            return p.SourceStopped(request.id, request.link, run.stop_slot or 0)
        await link.open_detector(conn, p.DetectorOpened(request.id, request.link))
        return None

    def _start(self, conn: Connection, link: LinkRuntime, request: p.SourceStart) -> p.Reply:
        if link.source is not None:
            return p.Error("not_allowed", "the source is already running", id=request.id)
        intensities = request.intensities or [link.link.quantum.source.mu]
        probabilities = request.probabilities or ([1.0] if not request.intensities else [])
        try:
            if len(intensities) != len(probabilities) or min(intensities) < 0:
                raise ValueError("intensities must be >= 0, one probability each")
            intensity_thresholds(probabilities)
        except ValueError as exc:
            return p.Error("bad_request", str(exc), id=request.id)
        run = SourceRun(bytes(request.prf_key), list(intensities), list(probabilities),
                        self.clock.now(), conn)
        link.source = run
        assert self.nursery is not None
        self.nursery.start_soon(link.run_source, run)
        return p.SourceStarted(request.id, request.link, run.t_start, link.rate_hz,
                               run.intensities, run.probabilities, link.slots_per_frame)


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


async def serve(config: DaemonConfig, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``config.host`` (port 0) and serve until cancelled; started with the Daemon."""
    daemon = Daemon(config)
    listeners = await trio.open_tcp_listeners(0, host=config.host)
    for extra in listeners[1:]:
        await extra.aclose()
    listener = listeners[0]
    daemon.port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        daemon.nursery = nursery
        task_status.started(daemon)
        await trio.serve_listeners(daemon.handle, [listener], handler_nursery=nursery)
