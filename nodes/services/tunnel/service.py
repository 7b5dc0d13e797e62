"""The node's program tunnels (trio shell of ``router``): local ports in, peers' programs out.

``bind`` opens one local TCP listener per reachable node (``QNET_PEER_<NAME>`` of this node's
programs); ``serve`` opens the ``tunnel`` channel to every neighbour (the end whose name sorts
first dials), relays frames by ``router.decide``, and connects connections that end here to
this node's listening program (``listen_port``). A connection that cannot be delivered, or
whose program does not read fast enough (``MAX_QUEUED`` frames waiting), is closed at both
ends; a malformed frame is counted and dropped. Counters go into the node's result.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from collections.abc import Mapping

import trio

from nodes.errors import RemoteProtocolError
from nodes.services.tunnel import router
from nodes.services.tunnel.router import CLOSE, DATA, OPEN, TunnelFrame

log = logging.getLogger("qnet.tunnel")

CHANNEL = "tunnel"
MAX_QUEUED = 1024  # frames waiting for a slow local program, per connection
MAX_CONNECTIONS = 256  # local connections at once, per node


class _Local:
    """This node's end of one tunnelled connection: the far node, the frames queued for the
    local socket (created before the socket, so nothing that arrives meanwhile is lost)."""

    def __init__(self, far: str) -> None:
        self.far = far
        self.queue_in, self.queue_out = trio.open_memory_channel[bytes | None](MAX_QUEUED)
        self.cancel = trio.CancelScope()


SERVICE_PREFIX = b"svc:"  # an OPEN frame's data naming a node service instead of the program
MAX_SERVICE_BACKLOG = 4  # channels opened to a service before it accepts them
MAX_SERVICES = 64  # (node, service name) pairs with a backlog


class FramedTunnel:
    """A node service's message channel to another node's service over the tunnels (each
    ``send`` one frame of at most ``router.MAX_DATA`` bytes, delivered whole and in order);
    the ``FrameChannel`` of nodes/services/kme/peer_link.py."""

    def __init__(self, service: TunnelService, key: tuple[str, int], local: _Local) -> None:
        self._service, self._key, self._local = service, key, local

    async def send(self, payload: bytes) -> None:
        if self._key not in self._service._locals:
            raise ConnectionError(f"tunnel to {self._local.far} closed")
        self._service._route(TunnelFrame(self._key[0], self._key[1], self._local.far, DATA,
                                         router.DEFAULT_TTL, payload))
        await trio.lowlevel.checkpoint()

    async def receive(self) -> bytes:
        try:
            data = await self._local.queue_out.receive()
        except trio.EndOfChannel:
            data = None
        if data is None:
            self._service._locals.pop(self._key, None)
            raise ConnectionError(f"tunnel to {self._local.far} closed by the far end")
        return data

    async def aclose(self) -> None:
        self._service._close(self._key)
        await trio.lowlevel.checkpoint()


class TunnelService:
    """Program tunnels of node ``node`` over ``transport`` (``routes``: destination -> next
    hop, static)."""

    def __init__(self, node: str, transport, routes: Mapping[str, str],
                 listen_port: int | None, host: str = "127.0.0.1") -> None:
        self.node = node
        self.transport = transport
        self.routes = dict(routes)
        self.listen_port = listen_port
        self.host = host
        self.counters: Counter[str] = Counter()
        self.listeners: dict[str, trio.SocketListener] = {}
        self._outbox = {hop: trio.open_memory_channel[bytes](math.inf)
                        for hop in set(self.routes.values())}
        self._locals: dict[tuple[str, int], _Local] = {}
        self._ids = itertools.count()
        self._services: dict[tuple[str, str], tuple] = {}  # (far node, name) -> backlog
        self._nursery: trio.Nursery | None = None

    async def bind(self, ports: dict[str, int] | None = None) -> dict[str, int]:
        """A local listener per destination (on ``ports`` after a restart); returns
        {node: port} (for the programs' env)."""
        for peer in self.routes:
            port = (ports or {}).get(peer, 0)
            self.listeners[peer] = (await trio.open_tcp_listeners(port, host=self.host))[0]
        return {peer: listener.socket.getsockname()[1]
                for peer, listener in self.listeners.items()}

    async def serve(self) -> None:
        """Carry frames until cancelled (start it once the peers' relays are known)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for hop in self._outbox:
                nursery.start_soon(self._link, hop)
            for peer, listener in self.listeners.items():
                nursery.start_soon(self._accept, peer, listener)

    def _post(self, hop: str, frame: TunnelFrame) -> None:
        self._outbox[hop][0].send_nowait(router.encode(frame))

    def _route(self, frame: TunnelFrame) -> None:
        """Send a frame this node made towards its destination."""
        hop = self.routes.get(frame.dst)
        if hop is None:
            self.counters["tunnel_no_route"] += 1
            return
        self._post(hop, frame)

    async def _link(self, hop: str) -> None:
        """The channel to neighbour ``hop``: its writer and reader."""
        if self.node < hop:
            channel = await self.transport.connect(hop, CHANNEL)
        else:
            channel = await self.transport.accept(hop, CHANNEL)
        async with trio.open_nursery() as nursery:
            async def writer() -> None:
                async for payload in self._outbox[hop][1]:
                    await channel.send(payload)

            nursery.start_soon(writer)
            try:
                while True:
                    payload = await channel.receive()
                    try:
                        frame = router.decode(payload, hop)
                    except RemoteProtocolError:
                        self.counters["tunnel_malformed"] += 1
                        continue
                    self._arrived(frame)
            except ConnectionError as exc:
                log.warning("tunnel channel to %s ended: %s", hop, exc)
                self.counters["tunnel_channel_errors"] += 1
                nursery.cancel_scope.cancel()

    def _arrived(self, frame: TunnelFrame) -> None:
        decision = router.decide(self.node, self.routes, frame)
        if isinstance(decision, router.Onward):
            self.counters["tunnel_forwarded"] += 1
            self._post(decision.next_hop, decision.frame)
            return
        if isinstance(decision, router.Dropped):
            self.counters[f"tunnel_{decision.reason}"] += 1
            return
        key = (frame.origin, frame.conn)
        local = self._locals.get(key)
        if frame.kind == OPEN and frame.data.startswith(SERVICE_PREFIX) and local is None:
            self._service_opened(key, frame.data[len(SERVICE_PREFIX):].decode(errors="replace"))
            return
        if frame.kind == OPEN and not decision.originated and local is None:
            if self.listen_port is None or len(self._locals) >= MAX_CONNECTIONS:
                self.counters["tunnel_refused"] += 1
                self._route(TunnelFrame(frame.origin, frame.conn, frame.origin, CLOSE,
                                        router.DEFAULT_TTL))
                return
            self._locals[key] = _Local(frame.origin)
            self._nursery.start_soon(self._answer, key)
            return
        if local is None:
            if frame.kind != CLOSE:
                self.counters["tunnel_unknown_connection"] += 1
            return
        try:
            local.queue_in.send_nowait(frame.data if frame.kind == DATA else None)
        except trio.WouldBlock:
            self.counters["tunnel_overflow"] += 1
            self._close(key)

    def _backlog(self, far: str, name: str) -> tuple:
        if (far, name) not in self._services:
            self._services[(far, name)] = trio.open_memory_channel[FramedTunnel](
                MAX_SERVICE_BACKLOG)
        return self._services[(far, name)]

    def _service_opened(self, key: tuple[str, int], name: str) -> None:
        """Node ``key[0]``'s service ``name`` opened a channel to ours (``accept_frames``)."""
        known = (key[0], name) in self._services
        backlog = self._backlog(key[0], name) if known or len(
            self._services) < MAX_SERVICES else None
        local = _Local(key[0])
        channel = FramedTunnel(self, key, local)
        self._locals[key] = local
        try:
            if backlog is None:
                raise trio.WouldBlock
            backlog[0].send_nowait(channel)
            self.counters["tunnel_service_channels"] += 1
        except trio.WouldBlock:
            self.counters["tunnel_refused"] += 1
            self._close(key)

    async def connect_frames(self, far: str, name: str) -> FramedTunnel:
        """Open a message channel to service ``name`` of node ``far``."""
        if far not in self.routes:
            raise ConnectionError(f"no route from {self.node} to {far}")
        key = (self.node, next(self._ids))
        local = self._locals[key] = _Local(far)
        self._route(TunnelFrame(self.node, key[1], far, OPEN, router.DEFAULT_TTL,
                                SERVICE_PREFIX + name.encode()))
        await trio.lowlevel.checkpoint()
        return FramedTunnel(self, key, local)

    async def accept_frames(self, far: str, name: str) -> FramedTunnel:
        """Wait for node ``far``'s service ``name`` to open a channel to ours."""
        return await self._backlog(far, name)[1].receive()

    async def _accept(self, peer: str, listener: trio.SocketListener) -> None:
        """Connections of this node's programs to ``peer``."""
        while True:
            stream = await listener.accept()
            if len(self._locals) >= MAX_CONNECTIONS:
                self.counters["tunnel_refused"] += 1
                await trio.aclose_forcefully(stream)
                continue
            key = (self.node, next(self._ids))
            self._locals[key] = _Local(peer)
            self.counters["tunnel_connections"] += 1
            self._route(TunnelFrame(self.node, key[1], peer, OPEN, router.DEFAULT_TTL))
            self._nursery.start_soon(self._pump, key, stream)

    async def _answer(self, key: tuple[str, int]) -> None:
        """A peer's program opened a connection to ours: connect to its listening port."""
        try:
            stream = await trio.open_tcp_stream(self.host, self.listen_port)
        except OSError as exc:
            log.warning("tunnel from %s: no program listening on %d (%s)", key[0],
                        self.listen_port, exc)
            self.counters["tunnel_refused"] += 1
            self._close(key)
            return
        self.counters["tunnel_answered"] += 1
        await self._pump(key, stream)

    async def _pump(self, key: tuple[str, int], stream: trio.SocketStream) -> None:
        """Both directions of one local connection until either end closes it."""
        local = self._locals.get(key)
        if local is None:  # closed before it got going
            await trio.aclose_forcefully(stream)
            return
        origin, conn = key

        async def to_network() -> None:
            while True:
                data = await stream.receive_some(router.MAX_DATA)
                if not data:
                    break
                self.counters["tunnel_bytes_out"] += len(data)
                self._route(TunnelFrame(origin, conn, local.far, DATA, router.DEFAULT_TTL,
                                        data))
            self._close(key)

        async def to_program() -> None:
            async for data in local.queue_out:
                if data is None:  # the far end closed
                    break
                self.counters["tunnel_bytes_in"] += len(data)
                await stream.send_all(data)
            self._locals.pop(key, None)
            local.cancel.cancel()

        try:
            with local.cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(to_network)
                    nursery.start_soon(to_program)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.counters["tunnel_resets"] += 1
            self._close(key)
        finally:
            await trio.aclose_forcefully(stream)

    def _close(self, key: tuple[str, int]) -> None:
        """End this node's side of a connection and tell the far end (once)."""
        local = self._locals.pop(key, None)
        if local is None:
            return
        local.cancel.cancel()
        self._route(TunnelFrame(key[0], key[1], local.far, CLOSE, router.DEFAULT_TTL))
