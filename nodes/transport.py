"""Classical channels between node processes, through the link relays, safe against any peer.

A node listens on one TCP port *per peer* (the orchestrator hands that port to the relay of
their link only, so a connection there should come from that relay), plus one UDP socket.
Each app opens its own named channel: the dialling side sends an authenticated
``ChannelHello`` first (``nodes.channel_hello``), the listening side checks it with the link
key and hands the connection to whoever awaits ``accept(peer, channel)``. A hello never
replaces a pending or open channel. Frames are length-prefixed (``emulator.wire``), at most
``HELLO_MAX_BYTES`` until the hello verified, ``MAX_FRAME`` after.

Everything a stranger can do is bounded and counted (``Transport.counters``): concurrent
unauthenticated connections per listener, a hello timeout (scaled with the link's delay),
channels pending per peer; a bad connection ends alone, logged once per kind of fault.
"""

from __future__ import annotations

import errno
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping

import trio

from emulator.child_config import Endpoint, NodeConfig, NodePorts, NodeView
from emulator.wire import HEADER, FramedStream, FrameTooLarge, TruncatedFrame
from nodes.channel_hello import (
    HELLO_MAX_BYTES,
    DuplicateChannel,
    HelloGate,
    TooManyPending,
    make_hello,
)
from nodes.errors import MalformedMessage, PeerClosed, RemoteProtocolError

log = logging.getLogger("qnet.transport")

MAX_FRAME = 32 * 1024 * 1024
HELLO_TIMEOUT_S = 10.0  # wall seconds, at least; see hello_timeout
HELLO_DELAY_FACTOR = 4.0  # the hello crosses the link once; allow for jitter and queueing
MAX_UNAUTHENTICATED = 64  # concurrent connections awaiting their hello, per listener
MAX_PENDING = 64  # authenticated channels waiting for accept, per peer
ACCEPT_BACKOFF_S = 0.1  # after EMFILE/ENFILE in accept (as trio.serve_listeners does)
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


def hello_timeout(delay_s: float, time_scale: float, base_s: float = HELLO_TIMEOUT_S) -> float:
    """Wall seconds a new connection may take to deliver its hello.

    The hello crosses a relay whose emulated delay is stretched by ``1/time_scale``, so the
    bound must grow with it: ``max(base, HELLO_DELAY_FACTOR * delay / time_scale)``.
    """
    return max(base_s, HELLO_DELAY_FACTOR * delay_s / time_scale)


class ChannelFramingError(MalformedMessage):
    """The peer's bytes on an open channel are not valid frames (the channel is unusable)."""


async def read_hello(stream: trio.abc.ReceiveStream) -> tuple[bytes, bytes] | None:
    """The first frame (at most ``HELLO_MAX_BYTES``) and the bytes that came after it.

    Only the hello is held to the small limit: the dialler may send its first big frame
    right behind it, in the same segment. Holds at most two reads of the peer's bytes;
    None when the peer closed before sending anything.
    """
    buffer = bytearray()
    need = HEADER.size
    while True:
        while len(buffer) < need:
            data = await stream.receive_some(HELLO_MAX_BYTES + HEADER.size)
            if not data:
                if buffer:
                    raise TruncatedFrame(len(buffer))
                return None
            buffer += data
        if need > HEADER.size:
            return bytes(buffer[HEADER.size:need]), bytes(buffer[need:])
        (length,) = HEADER.unpack_from(buffer)
        if length > HELLO_MAX_BYTES:
            raise FrameTooLarge(length, HELLO_MAX_BYTES)
        need += length


class _Prefixed:
    """A stream whose first received bytes are ``prefix`` (read past the hello)."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


class Channel:
    """A framed, ordered byte-message channel to one peer."""

    def __init__(self, framed: FramedStream, peer: str, name: str,
                 on_close: Callable[[Channel, str | None], None] | None = None) -> None:
        self.framed = framed
        self.peer = peer
        self.name = name
        self.bytes_sent = 0
        self.messages_sent = 0
        self._on_close = on_close
        self._outbox_send, self._outbox = trio.open_memory_channel[bytes](math.inf)
        self._outbox_drained = trio.Event()

    async def send(self, payload: bytes) -> None:
        """Send one payload; ``PeerClosed`` when the peer has reset the connection."""
        self.bytes_sent += len(payload)
        self.messages_sent += 1
        try:
            await self.framed.send(payload)
        except trio.BrokenResourceError as exc:
            self._closed("channel_errors")
            raise PeerClosed(f"channel {self.name!r} to {self.peer} broken: {exc}",
                             peer=self.peer) from None

    def post(self, payload: bytes) -> None:
        """Queue ``payload`` for ``run_writer`` without blocking.

        A protocol loop that answers what it receives must post, not send: if both ends
        blocked in send while their peer's buffers are full (say after a link cut), neither
        would read again and the pair would deadlock.
        """
        self._outbox_send.send_nowait(payload)

    async def run_writer(self) -> None:
        """Send posted payloads in order until ``drain`` (run it in the app's nursery)."""
        async for payload in self._outbox:
            await self.send(payload)
        self._outbox_drained.set()

    async def drain(self) -> None:
        """Accept no more posts and wait until everything posted has been sent."""
        self._outbox_send.close()
        await self._outbox_drained.wait()

    async def receive(self) -> bytes:
        """Next payload; ``PeerClosed`` when the peer closed or reset the connection,
        ``ChannelFramingError`` when its bytes are not frames (both ``RemoteProtocolError``)."""
        try:
            payload = await self.framed.receive()
        except FrameTooLarge as exc:
            self._closed("bad_frames")
            raise ChannelFramingError(f"channel {self.name!r}: {exc}", peer=self.peer) from None
        except trio.BrokenResourceError as exc:
            self._closed("channel_errors")
            raise PeerClosed(f"channel {self.name!r} to {self.peer} broken: {exc}",
                             peer=self.peer) from None
        if payload is None:
            self._closed(None)
            raise PeerClosed(f"channel {self.name!r} to {self.peer} closed by the peer",
                             peer=self.peer)
        return payload

    def _closed(self, fault: str | None) -> None:
        if self._on_close is not None:
            self._on_close(self, fault)
            self._on_close = None

    async def aclose(self) -> None:
        self._closed(None)
        await self.framed.aclose()


class Transport:
    """The node's classical sockets: one TCP listener per peer, a UDP socket, relay directory.

    ``link_keys`` maps each peer to the hex secret of their link; a peer without a key can
    neither be dialled nor reach us. ``hello_timeout_s`` is per peer (see ``hello_timeout``).
    """

    def __init__(self, node: str, host: str = "127.0.0.1", *, run_id: str = "",
                 link_keys: Mapping[str, str] | None = None,
                 hello_timeout_s: Mapping[str, float] | None = None,
                 max_unauthenticated: int = MAX_UNAUTHENTICATED,
                 max_pending: int = MAX_PENDING) -> None:
        self.node = node
        self.host = host
        self.run_id = run_id
        self.peers: dict[str, Endpoint] = {}
        self._keys = {peer: bytes.fromhex(key) for peer, key in (link_keys or {}).items()}
        self._timeouts = dict(hello_timeout_s or {})
        self._gates = {peer: HelloGate(run_id, node, peer, key) for peer, key in self._keys.items()}
        self.max_unauthenticated = max_unauthenticated
        self.max_pending = max_pending
        self._pending: dict[tuple[str, str], Channel] = {}
        self._open: set[tuple[str, str]] = set()
        self._unauthenticated: Counter[str] = Counter()
        self._arrival = trio.Condition()
        self._counters: Counter[str] = Counter()
        self._logged: set[str] = set()
        # the first fault of each kind (a handful of kinds): the runtime publishes them as events
        self._first_faults, self.first_faults = trio.open_memory_channel[tuple[str, str]](math.inf)
        self.listeners: dict[str, trio.SocketListener] = {}
        self.udp: trio.socket.SocketType | None = None

    @classmethod
    def for_node(cls, config: NodeConfig, view: NodeView) -> Transport:
        """The transport of node ``config.name``: its link keys, hello timeouts per peer."""
        timeouts = {}
        for link in view.links:
            if config.name in (link.a, link.b):
                peer = link.b if link.a == config.name else link.a
                delay = link.classical_delay_s + link.classical.jitter_ms / 1000.0
                if link.classical.rate_mbps:  # serialization of the hello itself
                    delay += 8 * HELLO_MAX_BYTES / (link.classical.rate_mbps * 1e6)
                timeouts[peer] = hello_timeout(delay, config.time_scale)
        return cls(config.name, config.host, run_id=config.run_id, link_keys=config.link_keys,
                   hello_timeout_s=timeouts)

    def link_key(self, peer: str) -> bytes:
        """The secret of the link to ``peer`` (services that authenticate their own frames
        derive from it, e.g. the key relay's tags); KeyError without a link."""
        return self._keys[peer]

    def counters(self) -> dict[str, int]:
        """What this transport saw: connections, channels, and every rejection by kind."""
        return dict(self._counters)

    async def bind(self, ports: NodePorts | None = None) -> dict[str, object]:
        """Bind one TCP listener per peer and the UDP socket (on ``ports`` when restarted,
        SO_REUSEADDR as trio sets it); returns the ready-file info ``{"tcp": {peer: port},
        "udp": port}``."""
        for peer in self._keys:
            port = ports.tcp.get(peer, 0) if ports is not None else 0
            self.listeners[peer] = (await trio.open_tcp_listeners(port, host=self.host))[0]
        self.udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        self.udp.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        await self.udp.bind((self.host, ports.udp if ports is not None else 0))
        return {"tcp": {peer: listener.socket.getsockname()[1]
                        for peer, listener in self.listeners.items()},
                "udp": self.udp.getsockname()[1]}

    async def serve(self) -> None:
        """Accept peer connections forever (run in the node's nursery)."""
        async with trio.open_nursery() as nursery:
            for peer, listener in self.listeners.items():
                nursery.start_soon(self._serve_listener, peer, listener, nursery)

    async def _serve_listener(self, peer: str, listener: trio.SocketListener,
                              nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                self._fault("accept_errors", f"accept on the listener for {peer}: {exc}")
                await trio.sleep(ACCEPT_BACKOFF_S)
                continue
            self._counters["connections"] += 1
            if self._unauthenticated[peer] >= self.max_unauthenticated:
                self._fault("rejected_connections",
                            f"more than {self.max_unauthenticated} connections awaiting a hello "
                            f"on the listener for {peer}")
                await trio.aclose_forcefully(stream)
                continue
            self._unauthenticated[peer] += 1
            nursery.start_soon(self._greet, peer, stream)

    async def _greet(self, peer: str, stream: trio.SocketStream) -> None:
        """Read and check the hello; hand the connection over as a pending channel or close it."""
        handed_over = False
        try:
            with trio.move_on_after(self._timeouts.get(peer, HELLO_TIMEOUT_S)):
                first = await read_hello(stream)
                if first is None:
                    self._counters["closed_before_hello"] += 1
                    return
                payload, rest = first
                hello = self._gates[peer].check(payload)
                key = (peer, hello.channel)
                if key in self._pending or key in self._open:
                    raise DuplicateChannel(f"channel {hello.channel!r} from {peer} already exists",
                                           peer=peer)
                if sum(1 for p, _ in self._pending if p == peer) >= self.max_pending:
                    raise TooManyPending(f"{peer} has {self.max_pending} channels pending",
                                         peer=peer)
                framed = FramedStream(_Prefixed(stream, rest), MAX_FRAME)
                self._pending[key] = Channel(framed, peer, hello.channel, self._channel_closed)
                handed_over = True
                self._counters["channels_accepted"] += 1
                async with self._arrival:
                    self._arrival.notify_all()
                return
            self._fault("hello_timeouts", f"a connection on the listener for {peer} sent no "
                        "hello in time")
        except FrameTooLarge as exc:
            self._fault("bad_hellos", f"listener for {peer}: {exc}")
        except RemoteProtocolError as exc:
            self._fault(getattr(exc, "counter", "bad_hellos"), f"listener for {peer}: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fault("connection_errors", f"listener for {peer}: {exc}")
        finally:
            self._unauthenticated[peer] -= 1
            if not handed_over:
                await trio.aclose_forcefully(stream)

    def _channel_closed(self, channel: Channel, fault: str | None) -> None:
        """Forget a channel whose connection ended, so its name may be opened again."""
        self._open.discard((channel.peer, channel.name))
        if self._pending.get((channel.peer, channel.name)) is channel:
            del self._pending[(channel.peer, channel.name)]
        if fault is not None:
            self._fault(fault, f"channel {channel.name!r} from {channel.peer} ended")

    def _dialled_closed(self, channel: Channel, fault: str | None) -> None:
        if fault is not None:
            self._fault(fault, f"channel {channel.name!r} to {channel.peer} ended")

    def _fault(self, counter: str, message: str) -> None:
        """Count a peer's fault; the first of each kind is logged as a warning and queued on
        ``first_faults`` (kind, message), the rest are logged at debug level."""
        self._counters[counter] += 1
        if counter in self._logged:
            log.debug("%s (%s)", message, counter)
            return
        self._logged.add(counter)
        log.warning("%s (%s, further ones logged at debug)", message, counter)
        self._first_faults.send_nowait((counter, message))

    async def connect(self, peer: str, channel: str) -> Channel:
        """Dial ``peer`` through its relay and open the named channel."""
        if peer not in self._keys:
            raise KeyError(f"{self.node} has no link key for {peer!r}")  # as for a missing peer
        endpoint = self.peers[peer]
        stream = await trio.open_tcp_stream(endpoint.host, endpoint.tcp)
        framed = FramedStream(stream, MAX_FRAME)
        await framed.send(make_hello(self._keys[peer], self.run_id, self.node, peer, channel))
        return Channel(framed, peer, channel, self._dialled_closed)

    async def accept(self, peer: str, channel: str) -> Channel:
        """Wait for ``peer`` to open the named channel to us."""
        key = (peer, channel)
        async with self._arrival:
            while key not in self._pending:
                await self._arrival.wait()
            accepted = self._pending.pop(key)
            self._open.add(key)
            return accepted
