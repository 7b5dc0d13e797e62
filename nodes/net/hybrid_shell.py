"""The trio shell of one node's hybrid plane (``nodes.net.hybrid.HybridCore``): one per node.

Header datagrams (magic ``b"QH"``) come from the node's ``NetService``; payload arrivals are
the daemon's ``PayloadArrived`` pushes on each of the node's ``[links.flight]`` fibres. The
shell performs the core's actions: switches (daemon ``PayloadSwitch``; those decided
together go in one write, in a task of their own so a slow reply never holds the next header), header sends (``NetService.send_udp``), deliveries
to the local endpoint of the flow, discards. Header keys derive from each link's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math

import numpy as np
import trio

from emulator.batches import batches
from emulator.daemon import protocol as p
from nodes.daemon_client import DaemonError
from nodes.net.forwarding import Forwarder, HeaderForwarder
from nodes.net.header import MAGIC, HeaderCodec, HybridHeader, PayloadDescriptor
from nodes.net.hybrid import (
    Delivered,
    Discard,
    HybridCore,
    SendHeader,
    Store,
    Switch,
)
from nodes.sdk import NodeContext

log = logging.getLogger("qnet.hybrid")

HEADER_QUEUE = 4096  # header datagrams waiting for the shell's task; more are dropped
DELIVERY_QUEUE = 100_000
EXPIRE_EVERY_S = 0.25  # emulated
MAX_LATENCY_SAMPLES = 5000


def header_key(link_secret: bytes) -> bytes:
    """The hybrid headers' MAC key of a link, derived from its secret (own purpose label)."""
    return hmac.new(link_secret, b"qnet hybrid header v1", hashlib.sha256).digest()


class HybridPlane:
    """Runs ``HybridCore`` for one node: routers switch, destinations collect per flow."""

    def __init__(self, node: NodeContext) -> None:
        if node.net is None:
            raise RuntimeError("hybrid packets need the routed plane (node.net)")
        self.node = node
        self.net = node.net
        self.fibres = {link.id: (link.b if link.a == node.name else link.a)
                       for link in node.view.links if getattr(link, "flight", None) is not None}
        keys = {link: header_key(node.transport.link_key(peer))
                for link, peer in self.fibres.items()}
        self.forwarder = Forwarder(node.name)
        hybrid = node.view.hybrid
        self.core = HybridCore(HeaderForwarder(self.forwarder, keys),
                               compensate=hybrid is None or hybrid.compensate)
        self.codecs = {link: HeaderCodec(key) for link, key in keys.items()}
        self._flows: dict[int, trio.MemorySendChannel] = {}
        self._headers_in, self._headers_out = trio.open_memory_channel[tuple[bytes, str]](
            HEADER_QUEUE)
        self.decision_us: list[float] = []  # payload arrival -> switch set (emulated us)
        self.decision_us_by_flow: dict[int, list[float]] = {}  # the same, by the header's flow
        self._arrived_at: dict[int, float] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def counters(self):
        return self.core.counters

    def flow(self, flow: int) -> trio.MemoryReceiveChannel:
        """Where this node receives the packets of ``flow`` addressed to it."""
        send, receive = trio.open_memory_channel[Delivered](DELIVERY_QUEUE)
        self._flows[flow] = send
        return receive

    def codec_to(self, neighbour: str) -> tuple[str, HeaderCodec]:
        """(link, codec) of the fibre to a neighbour (KeyError without one)."""
        link = self.net.link_to(neighbour)
        return link, self.codecs[link]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        daemon = self.node.daemon
        arrivals = {link: daemon.payloads(link) for link in self.fibres}
        for link in self.fibres:
            await daemon.request(p.FlightOpen, link=link)
        self.net.register_udp_handler(MAGIC, self._on_datagram)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._headers)
            for channel in arrivals.values():
                nursery.start_soon(self._arrivals, channel)
            nursery.start_soon(self._expire)
            task_status.started()

    def _on_datagram(self, data: bytes, neighbour: str, link: str) -> None:
        try:
            self._headers_in.send_nowait((data, link))
        except trio.WouldBlock:
            self.core.counters["hybrid_header_queue_full"] += 1

    async def _headers(self) -> None:
        async for data, link in self._headers_out:
            self.forwarder.routes = self.net.routes
            await self._perform(self.core.header(data, link, self.node.clock.now()))

    async def _arrivals(self, channel: trio.MemoryReceiveChannel) -> None:
        """The pushed arrivals of one fibre; those queued together are decided together, and
        the switches they yield go to the daemon in one write."""
        async for batch in batches(channel):
            switches: list[Switch | Store] = []
            for arrival in batch:
                if arrival.present and arrival.slot < 0:  # in our delay line: the budget runs
                    self._arrived_at[arrival.payload] = arrival.t
                await self._perform(self.core.arrival(arrival, self.node.clock.now()),
                                    switches)
            self._start_switches(switches)

    async def _expire(self) -> None:
        clock = self.node.clock
        while True:
            await trio.sleep(clock.wall_duration(EXPIRE_EVERY_S))
            now = clock.now()
            await self._perform(self.core.expire(now))
            for pid in [k for k, t in self._arrived_at.items() if now - t > EXPIRE_EVERY_S * 4]:
                del self._arrived_at[pid]  # never switched: its header was dropped

    async def _perform(self, actions: list, switches: list | None = None) -> None:
        """Carry out the core's actions; switches and stores are collected in ``switches``
        when given (the caller starts them together), else started at once."""
        own: list[Switch | Store] = [] if switches is None else switches
        for action in actions:
            if isinstance(action, Switch | Store):
                own.append(action)
            elif isinstance(action, SendHeader):
                if not self.net.send_udp(action.neighbour, action.data):
                    self.core.counters["hybrid_header_send_failed"] += 1
            elif isinstance(action, Delivered):
                self._deliver(action)
            elif isinstance(action, Discard):
                ref = p.QubitRef(self.node.name, action.slot)
                try:
                    await self.node.daemon.request(p.QubitDiscard, qubits=[ref])
                except DaemonError:
                    self.core.counters["hybrid_discard_failed"] += 1
        if switches is None:
            self._start_switches(own)

    def _start_switches(self, actions: list[Switch | Store]) -> None:
        """One task for these switches (one daemon write, one wait): a slow reply holds none
        of the headers or arrivals that come meanwhile."""
        if actions:
            assert self._nursery is not None
            self._nursery.start_soon(self._switch, actions)

    async def _switch(self, actions: list[Switch | Store]) -> None:
        """Set the switches (or store the payloads, at their destination) and go on with the
        core's answers. The decision latency is the interval the daemon judges the budget on:
        the payload's arrival (``PayloadArrived.t``) to the switch set (``Switched.t``), or to
        the daemon's refusal (``Error.t``) when it came late."""
        requests = []
        for action in actions:
            fields: dict = {"link": action.link, "payload": action.payload}
            if action.rotation is not None:
                fields["rotation"] = action.rotation
            requests.append((p.PayloadSwitch if isinstance(action, Switch) else p.PayloadStore,
                             fields))
        replies = await self.node.daemon.request_many(requests)
        follow: list = []
        for action, reply in zip(actions, replies):
            arrived = self._arrived_at.pop(action.payload, None)
            if isinstance(reply, p.Error):
                if reply.code != "late":
                    log.warning("%s of payload %d refused: %s", type(action).__name__,
                                action.payload, reply.message)
                ok, t_set = False, reply.t if reply.t is not None else self.node.clock.now()
            else:
                ok, t_set = True, reply.t
            if arrived is not None and len(self.decision_us) < MAX_LATENCY_SAMPLES:
                self.decision_us.append(max(0.0, t_set - arrived) * 1e6)
                self.decision_us_by_flow.setdefault(action.flow, []).append(self.decision_us[-1])
            if isinstance(action, Switch):
                follow += self.core.switched(action.payload, ok)
            else:
                follow += self.core.stored(action.payload, reply.slot if ok else None)
        await self._perform(follow)

    def _deliver(self, delivered: Delivered) -> None:
        channel = self._flows.get(delivered.header.flow)
        if channel is None:
            self.core.counters["hybrid_unknown_flow"] += 1
            return
        try:
            channel.send_nowait(delivered)
        except trio.WouldBlock:
            self.core.counters["hybrid_delivery_queue_full"] += 1


_planes: dict[str, HybridPlane] = {}
_starting: dict[str, trio.Event] = {}


async def plane_for(node: NodeContext) -> HybridPlane:
    """The node's one hybrid plane, started in ``node.services`` on first use."""
    if node.name in _planes:
        return _planes[node.name]
    if node.name in _starting:
        await _starting[node.name].wait()
        return _planes[node.name]
    _starting[node.name] = trio.Event()
    plane = HybridPlane(node)
    assert node.services is not None, "the node runs no services nursery"
    await node.services.start(plane.run)
    _planes[node.name] = plane
    _starting[node.name].set()
    return plane


def make_header(node: NodeContext, dst: str, flow: int, seq: int, ttl: int, kind: int,
                payload_id: int) -> HybridHeader:
    """A new packet's header: emulated ns timestamp, the H reference (Stokes S1 = 1)."""
    return HybridHeader(src=node.name, dst=dst, flow=flow, seq=seq, ttl=ttl,
                        timestamp_ns=max(0, int(node.clock.now() * 1e9)),
                        payload=PayloadDescriptor(kind, 0, 1, payload_id))


def correction(reference) -> dict | None:
    """QubitGate fields undoing a readout ``reference`` (rotation vector), None if identity."""
    r = np.asarray(reference, dtype=np.float64)
    angle = float(np.linalg.norm(r))
    if angle == 0.0 or not math.isfinite(angle):
        return None
    return {"gate": "ROT", "axis": tuple(float(x) for x in r / angle), "angle": -angle}
