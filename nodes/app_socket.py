"""The node's local app socket: the SDK's operations for a program in any language.

A node that runs an ``external`` app listens on 127.0.0.1 (ephemeral port) and starts the
app's ``command`` with ``QNET_APP_SOCKET=host:port``, ``QNET_APP_TOKEN``, ``QNET_NODE``,
``QNET_PEER`` and ``QNET_ROLE`` (``a`` or ``b``) in its environment. Frames are length-prefixed
MessagePack (``emulator.wire``): first ``AppHello`` with the token, then requests with an ``id``
that the reply echoes. Quantum requests are the daemon's own state-level messages
(``emulator.daemon.protocol``: ``EntangleStart``, ``PairAwait``, ``QubitMeasure``, ...),
forwarded over this node's daemon connection, so the program can act only on this node's
qubits; classical ones open named channels to peers through the relays. The program's last
stdout line, if JSON, becomes its result entry. Documented in docs/entanglement.md.
"""

from __future__ import annotations

import hmac
import logging
import secrets

import msgspec
import trio

from emulator.daemon import protocol as p
from emulator.wire import FramedStream
from nodes.daemon_client import DaemonError
from nodes.sdk import NodeContext
from nodes.transport import Channel

log = logging.getLogger("qnet.app_socket")
MAX_FRAME = 16 * 1024 * 1024
KILL_GRACE_S = 2.0


class AppHello(msgspec.Struct, tag="app_hello", forbid_unknown_fields=True):
    token: str


class NodeInfo(msgspec.Struct, tag="node_info"):
    node: str
    peer: str
    role: str
    links: dict[str, str]  # peer -> link name (entanglement links of this node)
    t_start: float
    t_end: float
    t0: float
    time_scale: float


class ChannelOpen(msgspec.Struct, tag="channel_open", forbid_unknown_fields=True):
    """Open the named classical channel to ``peer`` (``dial`` on one side, accept on the other)."""

    id: int
    peer: str
    name: str
    dial: bool


class ChannelOpened(msgspec.Struct, tag="channel_opened"):
    id: int
    channel: int


class ChannelSend(msgspec.Struct, tag="channel_send", forbid_unknown_fields=True):
    id: int
    channel: int
    payload: bytes


class ChannelReceive(msgspec.Struct, tag="channel_receive", forbid_unknown_fields=True):
    id: int
    channel: int


class ChannelData(msgspec.Struct, tag="channel_data"):
    id: int
    payload: bytes


class Sent(msgspec.Struct, tag="sent"):
    id: int


class Now(msgspec.Struct, tag="now", forbid_unknown_fields=True):
    id: int


class NowReply(msgspec.Struct, tag="now_reply"):
    id: int
    t: float


_FORWARDED = (p.EntangleStart, p.EntangleStop, p.PairAwait, p.QubitPrepare, p.QubitGate,
              p.QubitMeasure, p.BellMeasure, p.QubitDiscard, p.MemoryStatsRequest)
AppRequest = (AppHello | ChannelOpen | ChannelSend | ChannelReceive | Now | p.EntangleStart
              | p.EntangleStop | p.PairAwait | p.QubitPrepare | p.QubitGate | p.QubitMeasure
              | p.BellMeasure | p.QubitDiscard | p.MemoryStatsRequest)
AppReply = (NodeInfo | ChannelOpened | ChannelData | Sent | NowReply | p.EntangleStarted
            | p.PairsDelivered | p.Prepared | p.Measured | p.BellResult | p.Done
            | p.MemoryStats | p.Error)
request_decoder = msgspec.msgpack.Decoder(AppRequest)
reply_decoder = msgspec.msgpack.Decoder(AppReply)
encoder = msgspec.msgpack.Encoder()


class AppSocket:
    """Serves one external program's connection(s) for this node."""

    def __init__(self, node: NodeContext, peer: str, role: str) -> None:
        self.node = node
        self.peer = peer
        self.role = role
        self.token = secrets.token_hex(16)
        self.channels: dict[int, Channel] = {}
        self.port = 0

    def info(self) -> NodeInfo:
        links = {}
        for link in self.node.view.links:
            if link.entanglement is not None and self.node.name in (link.a, link.b):
                links[link.b if link.a == self.node.name else link.a] = link.id
        return NodeInfo(self.node.name, self.peer, self.role, links, self.node.t_start,
                        self.node.t_end, self.node.clock.t0, self.node.clock.time_scale)

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        for extra in listeners[1:]:
            await extra.aclose()
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners[:1])

    async def _handle(self, stream: trio.SocketStream) -> None:
        framed = FramedStream(stream, MAX_FRAME)
        async with stream:
            try:
                with trio.fail_after(10):
                    hello = request_decoder.decode(await framed.receive() or b"")
                if not (isinstance(hello, AppHello)
                        and hmac.compare_digest(hello.token.encode(), self.token.encode())):
                    await framed.send(encoder.encode(p.Error("unauthenticated", "bad token",
                                                             fatal=True)))
                    return
                await framed.send(encoder.encode(self.info()))
                async with trio.open_nursery() as nursery:
                    while (payload := await framed.receive()) is not None:
                        try:
                            request = request_decoder.decode(payload)
                        except msgspec.DecodeError as exc:
                            await framed.send(encoder.encode(p.Error("bad_frame", str(exc))))
                            continue
                        nursery.start_soon(self._answer, framed, request)
                    nursery.cancel_scope.cancel()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                    msgspec.DecodeError):
                pass

    async def _answer(self, framed: FramedStream, request) -> None:
        rid = getattr(request, "id", None)
        try:
            reply = await self._reply(request)
        except DaemonError as exc:
            reply = p.Error(exc.code, str(exc), id=rid)
        except (ConnectionError, KeyError, trio.BrokenResourceError) as exc:
            reply = p.Error("bad_request", f"{type(exc).__name__}: {exc}", id=rid)
        try:
            await framed.send(encoder.encode(reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _reply(self, request) -> msgspec.Struct:
        if isinstance(request, _FORWARDED):
            fields = msgspec.structs.asdict(request)
            rid = fields.pop("id")
            reply = await self.node.daemon.request(type(request), **fields)
            return msgspec.structs.replace(reply, id=rid)
        if isinstance(request, ChannelOpen):
            transport = self.node.transport
            channel = await (transport.connect(request.peer, f"app/{request.name}")
                             if request.dial else
                             transport.accept(request.peer, f"app/{request.name}"))
            handle = len(self.channels) + 1
            self.channels[handle] = channel
            return ChannelOpened(request.id, handle)
        if isinstance(request, ChannelSend):
            await self.channels[request.channel].send(request.payload)
            return Sent(request.id)
        if isinstance(request, ChannelReceive):
            return ChannelData(request.id, await self.channels[request.channel].receive())
        if isinstance(request, Now):
            return NowReply(request.id, self.node.clock.now())
        return p.Error("not_allowed", "already authenticated", id=getattr(request, "id", None))
