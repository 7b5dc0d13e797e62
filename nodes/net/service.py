"""The routed classical plane of one node: the trio shell around the nodes/net cores.

One UDP socket (the node's ``Transport.udp``) carries hellos, LSAs and routed frames to each
neighbour's relay endpoint; a receive task feeds them to the router, the forwarder and the
streams, a timer task wakes at the cores' earliest deadline. Apps get datagrams and reliable
streams to any node; the hybrid router registers for the datagrams that start with its magic.
API and behaviour: docs/net.md ("The shell and its API").
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from emulator.clock import EmulatedClock
from nodes.errors import MalformedMessage, UnexpectedMessage
from nodes.net.forwarding import Deliver, Forward, Forwarder
from nodes.net.linkstate import (
    LinkConfig,
    LinkStateRouter,
    Metric,
    NeighbourDown,
    NeighbourUp,
    Route,
    RoutesChanged,
    RoutingConfig,
    Send,
)
from nodes.net.messages import (
    DatagramBody,
    RoutedFrame,
    StreamAck,
    StreamSegment,
    decode,
    decode_datagram,
    decode_stream,
    encode,
)
from nodes.net.stream import StreamConfig, StreamReceiver, StreamSender

log = logging.getLogger("qnet.net")

PORT_SHIFT = 40  # stream id = port << 40 | a random 40-bit id chosen by the opener
DATAGRAM_QUEUE = 1024
MAX_DATAGRAM = 65535
RECEIVE_BATCH = 64  # datagrams handled per wake-up of the receive task

UdpHandler = Callable[[bytes, str, str], None]  # (data, neighbour, link)
EventSink = Callable[[str, dict], Awaitable[None]]  # (kind, fields)


class NoRoute(Exception):
    """No route to the destination (yet, or any more)."""


@dataclass(frozen=True)
class Datagram:
    src: str
    port: int
    payload: bytes


class RoutedStream:
    """One end of a reliable ordered message stream to ``peer`` (both directions)."""

    def __init__(self, service: NetService, peer: str, stream_id: int,
                 config: StreamConfig) -> None:
        self.service, self.peer, self.id = service, peer, stream_id
        self.port = stream_id >> PORT_SHIFT
        self.sender = StreamSender(stream_id, config)
        self.receiver = StreamReceiver(stream_id, config)
        self._ready: deque[bytes] = deque()
        self._changed = trio.Event()

    def send(self, data: bytes) -> None:
        """Queue one message (sent as the window allows, retransmitted until acked)."""
        self.sender.send(data)
        self.service._flush(self)
        self.service._rearm.set()  # the sender's timer may be new

    async def receive(self) -> bytes:
        """The next message in order."""
        while not self._ready:
            self._ready.extend(self.receiver.take())
            if self._ready:
                update = self.receiver.window_update()
                if update is not None:
                    self.service._originate(self.peer, "stream", encode(update))
                break
            await self._wait()
        return self._ready.popleft()

    async def wait_acked(self) -> None:
        """Until every message sent so far has been acknowledged."""
        while not self.sender.idle:
            await self._wait()

    async def _wait(self) -> None:
        event = self._changed
        await event.wait()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def routing_config(routing: Any) -> RoutingConfig:
    """The router core's config from a scenario's ``[routing]`` (``emulator.scenario.Routing``)."""
    if routing.metric == "weighted":
        w = routing.weights
        metric = Metric(length_km=w.length_km, rtt_ms=w.rtt_ms, loss_db=w.loss_db, hop=w.hop)
    else:
        metric = Metric.named(routing.metric)
    retransmit = routing.retransmit_interval_s or routing.hello_interval_s
    return RoutingConfig(hello_interval=routing.hello_interval_s,
                         dead_interval=routing.dead_interval_s, retransmit_interval=retransmit,
                         min_lsa_interval=min(0.5, routing.hello_interval_s), metric=metric)


def node_links(name: str, view: Any) -> dict[str, tuple[str, LinkConfig]]:
    """Our links (name -> (neighbour, advertised metrics)) from the node's scenario view:
    ``length_km`` as configured, ``loss_db`` of the quantum link (0 without one)."""
    links = {}
    for link in view.links:
        quantum = link.quantum
        loss = quantum.attenuation_db_per_km * link.length_km if quantum is not None else 0.0
        links[link.id] = (link.b if link.a == name else link.a,
                          LinkConfig(length_km=link.length_km, loss_db=loss))
    return links


class NetService:
    """Routing, forwarding, datagrams and streams of node ``name`` over its ``links``
    (link name -> (neighbour, LinkConfig)); times are the emulated ``clock``'s."""

    def __init__(self, name: str, links: Mapping[str, tuple[str, LinkConfig]],
                 config: RoutingConfig, clock: EmulatedClock, *, first_seq: int = 0,
                 stream_config: StreamConfig | None = None, events: EventSink | None = None
                 ) -> None:
        self.name, self.config, self.clock = name, config, clock
        self.first_seq = first_seq
        self.stream_config = stream_config or StreamConfig(min_rto=0.05)
        self._links = {link: nb for link, (nb, _) in links.items()}
        self._link_of = {nb: link for link, nb in self._links.items()}
        self._link_configs = {link: cfg for link, (_, cfg) in links.items()}
        self._events = events
        self.router: LinkStateRouter | None = None
        self.forwarder = Forwarder(name)
        self.counters_: Counter[str] = Counter()
        self._handlers: dict[bytes, UdpHandler] = {}
        self._datagrams: dict[int, tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel]] = {}
        self._streams: dict[tuple[str, int], RoutedStream] = {}
        self._listeners: dict[int, tuple[trio.MemorySendChannel, trio.MemoryReceiveChannel]] = {}
        self._routes_event = trio.Event()
        self._rearm = trio.Event()
        self._event_send, self._event_receive = trio.open_memory_channel[tuple[str, dict]](math.inf)
        self._sock: trio.socket.SocketType | None = None
        self._raw: socket.socket | None = None
        self._peers: Callable[[], Mapping[str, Any]] = dict
        self._by_address: dict[tuple[str, int], str] = {}

    @classmethod
    def for_node(cls, config: Any, clock: EmulatedClock, events: EventSink | None = None
                 ) -> NetService:
        """The service of a node process (``emulator.child_config.NodeConfig`` with routing);
        the first LSA's seq is the emulated time in ms, so a restarted node's beats its old."""
        return cls(config.name, node_links(config.name, config.view),
                   routing_config(config.routing), clock,
                   first_seq=max(0, int(1000 * clock.now())), events=events)

    # ---- API ------------------------------------------------------------------------------

    @property
    def routes(self) -> Mapping[str, Route]:
        return self.forwarder.routes

    def route(self, dst: str) -> Route | None:
        return self.forwarder.routes.get(dst)

    def next_hop(self, dst: str) -> str | None:
        route = self.route(dst)
        return None if route is None else route.next_hop

    async def routes_changed(self) -> Mapping[str, Route]:
        """The new table, at the next change of the routing table."""
        event = self._routes_event
        await event.wait()
        return self.routes

    async def wait_route(self, dst: str) -> Route:
        """The route to ``dst``, once there is one."""
        while (route := self.route(dst)) is None:
            await self.routes_changed()
        return route

    def link_to(self, neighbour: str) -> str:
        return self._link_of[neighbour]

    def neighbour_on(self, link: str) -> str:
        return self._links[link]

    def register_udp_handler(self, magic: bytes, handler: UdpHandler) -> None:
        """Datagrams starting with ``magic`` go to ``handler(data, neighbour, link)``."""
        if not magic or magic in self._handlers:
            raise ValueError(f"magic {magic!r} is empty or registered already")
        self._handlers[magic] = handler

    def send_udp(self, neighbour: str, data: bytes) -> bool:
        """One datagram to a direct neighbour through its relay; False if not sent."""
        endpoint = self._peers().get(neighbour)
        if endpoint is None or self._raw is None:
            self.counters_["udp_no_endpoint"] += 1
            return False
        try:
            self._raw.sendto(data, (endpoint.host, endpoint.udp))
        except (BlockingIOError, InterruptedError):
            self.counters_["udp_send_dropped"] += 1
            return False
        except OSError as exc:  # e.g. ECONNREFUSED reported for an earlier datagram
            self.counters_["udp_send_errors"] += 1
            log.debug("sendto %s: %s", neighbour, exc)
            return False
        self.counters_["udp_sent"] += 1
        return True

    async def send_datagram(self, dst: str, port: int, payload: bytes) -> None:
        """A routed datagram to any node (best effort); ``NoRoute`` without a route."""
        await trio.lowlevel.checkpoint()
        if dst != self.name and self.route(dst) is None:
            raise NoRoute(f"{self.name} has no route to {dst!r}")
        self._originate(dst, "datagram", encode(DatagramBody(port, payload)))

    def datagrams(self, port: int) -> trio.MemoryReceiveChannel:
        """Where routed datagrams to ``port`` arrive (as ``Datagram``)."""
        return self._datagram_queue(port)[1]

    async def open_stream(self, dst: str, port: int) -> RoutedStream:
        """A reliable ordered stream to ``port`` at ``dst`` (the peer accepts on first data)."""
        await trio.lowlevel.checkpoint()
        stream_id = (port << PORT_SHIFT) | secrets.randbits(PORT_SHIFT)
        stream = self._streams[(dst, stream_id)] = RoutedStream(self, dst, stream_id,
                                                                self.stream_config)
        return stream

    async def accept_stream(self, port: int) -> RoutedStream:
        """The next stream a peer opened to our ``port``."""
        if port not in self._listeners:
            self._listeners[port] = trio.open_memory_channel(64)
        return await self._listeners[port][1].receive()

    def counters(self) -> dict[str, int]:
        """Service, forwarding and routing counters (``net.`` prefix) for the node's result."""
        merged = Counter(self.counters_) + self.forwarder.counters
        if self.router is not None:
            merged += self.router.counters
        return {f"net.{k}": v for k, v in sorted(merged.items())}

    # ---- the tasks ------------------------------------------------------------------------

    async def run(self, sock: trio.socket.SocketType,
                  peers: Callable[[], Mapping[str, Any]],
                  *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve on ``sock`` (bound) with neighbours' endpoints from ``peers()`` (``.host``,
        ``.udp``) until cancelled."""
        self._sock, self._peers = sock, peers
        self._raw = socket.socket(fileno=os.dup(sock.fileno()))
        self._raw.setblocking(False)
        configs = {link: self._link_configs[link] for link in self._links}
        self.router = LinkStateRouter(self.name, configs, self.config, self.clock.now(),
                                      first_seq=self.first_seq)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_loop)
                nursery.start_soon(self._timer_loop)
                nursery.start_soon(self._publish_events)
                task_status.started()
        finally:
            self._raw.close()

    async def _receive_loop(self) -> None:
        """Wait for a datagram, then take what else is queued (up to ``RECEIVE_BATCH``)
        without waiting, and wake the timer task once for the lot."""
        assert self._sock is not None and self._raw is not None
        while True:
            try:
                first = await self._sock.recvfrom(MAX_DATAGRAM)
            except ConnectionRefusedError:  # an ICMP error for an earlier send (no relay yet)
                self.counters_["udp_refused"] += 1
                continue
            batch = [first]
            while len(batch) < RECEIVE_BATCH:
                try:
                    batch.append(self._raw.recvfrom(MAX_DATAGRAM))
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionRefusedError:
                    self.counters_["udp_refused"] += 1
            for data, address in batch:
                neighbour = self._neighbour_at(address[:2])
                if neighbour is None:
                    self.counters_["foreign"] += 1
                    continue
                self._on_datagram(data, neighbour, self._link_of[neighbour])
            self._rearm.set()

    async def _timer_loop(self) -> None:
        while True:
            with trio.move_on_at(self.clock.deadline(self._next_deadline())):
                await self._rearm.wait()
            self._rearm = trio.Event()
            now = self.clock.now()
            assert self.router is not None
            self._apply(self.router.handle_timer(now), now)
            for stream in list(self._streams.values()):
                stream.sender.handle_timer(now)
                self._flush(stream)

    async def _publish_events(self) -> None:
        async for kind, fields in self._event_receive:
            if self._events is not None:
                await self._events(kind, fields)

    # ---- inputs ---------------------------------------------------------------------------

    def _neighbour_at(self, address: tuple[str, int]) -> str | None:
        found = self._by_address.get(address)
        if found is None:
            self._by_address = {(ep.host, ep.udp): nb for nb, ep in self._peers().items()
                                if nb in self._link_of}
            found = self._by_address.get(address)
        return found

    def _on_datagram(self, data: bytes, neighbour: str, link: str) -> None:
        for magic, handler in self._handlers.items():
            if data.startswith(magic):
                try:
                    handler(data, neighbour, link)
                except Exception:  # a handler's bug must not stop routing
                    self.counters_["handler_errors"] += 1
                    log.exception("udp handler for %r failed", magic)
                return
        try:
            message = decode(data)
        except MalformedMessage:
            self.counters_["malformed"] += 1
            return
        now = self.clock.now()
        if isinstance(message, RoutedFrame):
            decision, frame = self.forwarder.handle(message, link)
            if isinstance(decision, Forward):
                self.send_udp(decision.next_hop, encode(frame))
            elif isinstance(decision, Deliver):
                self._deliver(frame, now)
            return
        assert self.router is not None
        self._apply(self.router.receive(link, message, now), now)

    def _deliver(self, frame: RoutedFrame, now: float) -> None:
        try:
            if frame.proto == "datagram":
                body = decode_datagram(frame.payload)
                send, _ = self._datagram_queue(body.port)
                try:
                    send.send_nowait(Datagram(frame.src, body.port, body.data))
                except trio.WouldBlock:
                    self.counters_["datagrams_dropped_full"] += 1
                return
            message = decode_stream(frame.payload)
        except MalformedMessage:
            self.counters_["malformed"] += 1
            return
        stream = self._streams.get((frame.src, message.stream))
        try:
            if isinstance(message, StreamAck):
                if stream is None:
                    self.counters_["stream_unknown_ack"] += 1
                    return
                stream.sender.receive_ack(message, now)
                self._flush(stream)
            else:
                stream = stream or self._accepted(frame.src, message)
                if stream is None:
                    return
                ack = stream.receiver.receive_segment(message, now)
                self._originate(frame.src, "stream", encode(ack))
        except UnexpectedMessage as exc:
            self.counters_["stream_bad_messages"] += 1
            log.debug("stream from %s: %s", frame.src, exc)
            return
        stream._poke()

    def _accepted(self, src: str, segment: StreamSegment) -> RoutedStream | None:
        port = segment.stream >> PORT_SHIFT
        listener = self._listeners.get(port)
        if listener is None:
            self.counters_["stream_no_listener"] += 1
            return None
        stream = RoutedStream(self, src, segment.stream, self.stream_config)
        try:
            listener[0].send_nowait(stream)
        except trio.WouldBlock:
            self.counters_["stream_backlog_full"] += 1
            return None
        self._streams[(src, segment.stream)] = stream
        return stream

    # ---- outputs --------------------------------------------------------------------------

    def _apply(self, actions: list, now: float) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.send_udp(self._links[action.link], encode(action.message))
            elif isinstance(action, RoutesChanged):
                self._routes_changed(action, now)
            elif isinstance(action, NeighbourUp | NeighbourDown):
                fields = {"link": action.link, "neighbour": action.neighbour, "at": action.at}
                if isinstance(action, NeighbourDown):
                    fields["reason"] = action.reason
                kind = "neighbour_up" if isinstance(action, NeighbourUp) else "neighbour_down"
                log.info("%s %s on %s", kind, action.neighbour, action.link)
                self._event_send.send_nowait((kind, fields))

    def _routes_changed(self, action: RoutesChanged, now: float) -> None:
        old = self.forwarder.routes
        self.forwarder.set_routes(action.routes)
        new = self.forwarder.routes
        changed = sorted(d for d in set(old) | set(new)
                         if (old.get(d) and old[d].path) != (new.get(d) and new[d].path))
        lost = [d for d in old if d not in new]
        for stream in self._streams.values():
            if stream.peer in changed:
                stream.sender.reroute(now)
                self._flush(stream)
        self._routes_event.set()
        self._routes_event = trio.Event()
        self._event_send.send_nowait(("route_changed", {
            "changed": len(changed), "unreachable": len(lost), "at": now,
            "dsts": ",".join(changed)[:200]}))

    def _originate(self, dst: str, proto: str, payload: bytes) -> None:
        decision, frame = self.forwarder.originate(dst, proto, payload)
        if isinstance(decision, Forward):
            self.send_udp(decision.next_hop, encode(frame))
        elif isinstance(decision, Deliver):
            self._deliver(frame, self.clock.now())

    def _flush(self, stream: RoutedStream) -> None:
        now = self.clock.now()
        for segment in stream.sender.segments_to_send(now):
            self._originate(stream.peer, "stream", encode(segment))

    def _next_deadline(self) -> float:
        assert self.router is not None
        times = [self.router.next_deadline()]
        times += [t for s in self._streams.values() if (t := s.sender.next_deadline()) is not None]
        return min(times)

    def _datagram_queue(self, port: int):
        if port not in self._datagrams:
            self._datagrams[port] = trio.open_memory_channel(DATAGRAM_QUEUE)
        return self._datagrams[port]
