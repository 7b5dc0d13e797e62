"""A relay's TCP side: each accepted connection joined to a new one to the peer, shaped both
ways, with the caps on strangers (connection count, silent and idle connections).

``emulator.relay`` owns the sockets' lifetime and the link's state; this module only pumps.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import TYPE_CHECKING

import trio

from emulator.capture import TcpFlow
from emulator.relay_core import StreamOrder, direction_of, other

if TYPE_CHECKING:
    from emulator.relay import Relay

MAX_CHUNK = 65536  # largest TCP read
MIN_CHUNK = 1500  # smallest TCP read size used under a rate limit (about one Ethernet frame)
CHUNK_SLICE_S = 0.002  # under a rate limit, read at most ~2 ms of serialization at a time
TCP_QUEUE_CHUNKS = 64  # chunks buffered per TCP direction before the relay stops reading
MAX_TCP_CONNECTIONS = 256  # concurrent joined connections per side; more are closed at once
FIRST_BYTE_TIMEOUT_S = 30.0  # wall s a new connection may stay silent (its hello is unshaped)
IDLE_TIMEOUT_S = 600.0  # emulated s without a byte either way before a connection is closed


class TcpJoiner:
    """Joins the connections accepted for one relay; ``handle`` serves one of them."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.open = {"a": 0, "b": 0}
        self.idle_timeout = max(IDLE_TIMEOUT_S, IDLE_TIMEOUT_S / relay.config.time_scale)

    async def handle(self, sender: str, accepted: trio.SocketStream) -> None:
        """Join a connection from ``sender`` to a new connection to its peer, shaped both ways.

        At most ``MAX_TCP_CONNECTIONS`` per side; a connection silent for
        ``FIRST_BYTE_TIMEOUT_S`` after it opened, or idle for ``idle_timeout`` wall seconds
        later, is closed. A reset or garbage ends this connection only.
        """
        self.relay.counters.connections += 1
        if self.open[sender] >= MAX_TCP_CONNECTIONS:
            self.relay.fault("rejected_connections", "more than %d connections from %s",
                             MAX_TCP_CONNECTIONS, sender)  # fmt: skip
            await trio.aclose_forcefully(accepted)
            return
        self.open[sender] += 1
        try:
            await self._join(sender, accepted)
        finally:
            self.open[sender] -= 1

    async def _join(self, sender: str, accepted: trio.SocketStream) -> None:
        relay = self.relay
        target = relay.config.targets[other(sender)]
        try:
            peer = await trio.open_tcp_stream(target.host, target.tcp)
        except OSError as exc:
            relay.fault("connect_failures", "cannot reach %s at %s:%d: %s",
                        other(sender), target.host, target.tcp, exc)  # fmt: skip
            await trio.aclose_forcefully(accepted)
            return
        flow = None
        if relay.capture is not None:
            try:
                port = accepted.socket.getpeername()[1]
            except OSError:  # the client is gone already; its bytes are still captured
                port = 0
            flow = TcpFlow(relay.capture, (relay.hosts[sender], port),
                           (relay.hosts[other(sender)], target.tcp))
            flow.open(time.time())
        idle = trio.CancelScope(deadline=trio.current_time() + FIRST_BYTE_TIMEOUT_S)
        try:
            with idle:
                async with accepted, peer, trio.open_nursery() as nursery:
                    pump = functools.partial(self._pump, cancel=nursery.cancel_scope,
                                             idle=idle, flow=flow)
                    nursery.start_soon(pump, accepted, peer, direction_of(sender), "client")
                    nursery.start_soon(pump, peer, accepted, direction_of(other(sender)),
                                       "server")
        finally:
            if flow is not None:
                flow.close(time.time())
        if idle.cancelled_caught:
            relay.fault("idle_timeouts", "closed a connection from %s that stayed silent", sender)

    def _chunk_size(self, key: str) -> int:
        rate = self.relay.shapers[key].wall_rate_bps
        if rate is None:
            return MAX_CHUNK
        return int(min(MAX_CHUNK, max(MIN_CHUNK, rate / 8 * CHUNK_SLICE_S)))

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        key: str,
        role: str,
        *,
        cancel: trio.CancelScope,
        idle: trio.CancelScope,
        flow: TcpFlow | None = None,
    ) -> None:
        """Copy one direction of a TCP connection; when it ends, end the whole connection.

        Every chunk read pushes the connection's ``idle`` deadline back; a delivered chunk
        goes to the capture's ``flow`` as sent by ``role`` ("client" or "server")."""
        relay = self.relay
        shaper = relay.shapers[key]
        order = StreamOrder()
        chunk = self._chunk_size(key)
        send, receive = trio.open_memory_channel[tuple[float, bytes]](TCP_QUEUE_CHUNKS)

        async def read() -> None:
            async with send:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while data := await source.receive_some(chunk):
                        idle.deadline = trio.current_time() + self.idle_timeout
                        release = order.release(shaper.transmit(trio.current_time(), len(data)))
                        await send.send((release, data))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                # inside the nursery, so a peer that closed mid-flight is not an error group
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    async with receive:
                        async for release, data in receive:
                            await relay.sleep_until(release)
                            await relay.wait_up()
                            data = relay.maybe_corrupt(data)
                            await sink.send_all(data)
                            relay.counters.add(key, len(data))
                            if flow is not None:
                                flow.data(role, time.time(), data)
                nursery.cancel_scope.cancel()
        finally:
            cancel.cancel()
