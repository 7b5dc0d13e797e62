"""A relay's UDP side: datagrams from each node's endpoint queued, shaped and delivered to the
peer from the other side's socket, so replies come back the same way; strangers dropped.

``emulator.relay`` binds the sockets and owns the link's state; this module only forwards.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import trio

from emulator.capture import udp_frame
from emulator.relay_core import DatagramQueue, direction_of, other

if TYPE_CHECKING:
    from emulator.relay import Relay

log = logging.getLogger("qnet.relay")

MAX_DATAGRAM = 65536  # the largest UDP datagram accepted
UDP_QUEUE_BYTES = 4 * 1024 * 1024  # datagrams beyond this backlog are tail-dropped


class UdpForwarder:
    """The UDP sockets of one relay (``sockets[side]``, bound by the relay) and their queues."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.sockets: dict[str, trio.socket.SocketType] = {}
        self._queues = {key: DatagramQueue() for key in ("ab", "ba")}
        self._wake = {key: trio.Event() for key in ("ab", "ba")}

    async def receive(self, sender: str) -> None:
        """Take datagrams from ``sender``'s node endpoint on its socket; queue them for the
        peer or drop them. Datagrams from any other address are dropped and counted."""
        relay = self.relay
        sock = self.sockets[sender]
        key = direction_of(sender)
        shaper, queue = relay.shapers[key], self._queues[key]
        own = relay.config.targets[sender]
        expected = (own.host, own.udp)  # the node of this side; anyone else is a stranger
        while True:
            try:
                data, source = await sock.recvfrom(MAX_DATAGRAM)
            except OSError:  # e.g. ICMP errors surfacing on Linux; the socket stays usable
                continue
            if source[:2] != expected:
                relay.fault("foreign_datagrams", "dropped a datagram from %s:%d on %s's socket",
                            source[0], source[1], sender)  # fmt: skip
                continue
            if (relay.is_cut or shaper.lost() or relay.lost_to_degrade()
                    or queue.pending_bytes + len(data) > UDP_QUEUE_BYTES):
                relay.counters.dropped += 1
                continue
            if queue.push(shaper.transmit(trio.current_time(), len(data)), data):
                self._wake[key].set()

    async def deliver(self, sender: str) -> None:
        """Send queued datagrams of ``sender`` to the peer's endpoint when they are due."""
        relay = self.relay
        timer = relay.timer
        receiver = other(sender)
        key = direction_of(sender)
        sock = self.sockets[receiver]  # so the peer's reply comes back on its own socket
        target = relay.config.targets[receiver]
        address = (target.host, target.udp)
        queue = self._queues[key]
        while True:
            wake = self._wake[key] = trio.Event()
            deadline = queue.next_deadline()
            target_time = deadline - timer.lead
            if target_time > trio.current_time():  # also true when empty (inf)
                with trio.move_on_at(target_time) as scope:
                    await wake.wait()
                if scope.cancelled_caught:
                    timer.observe(trio.current_time() - deadline)
            for payload in queue.pop_due(trio.current_time() + timer.lead):
                if relay.is_cut:
                    relay.counters.dropped += 1
                    continue
                try:
                    await sock.sendto(payload, address)
                except OSError as exc:
                    log.debug("link %s: UDP send to %s failed: %s",
                              relay.config.name, address, exc)  # fmt: skip
                    relay.counters.dropped += 1
                else:
                    relay.counters.add(key, len(payload))
                    if relay.capture is not None:
                        relay.capture.write(time.time(), udp_frame(
                            relay.hosts[sender], relay.hosts[receiver],
                            relay.config.targets[sender].udp, target.udp, payload))
            await trio.lowlevel.checkpoint()
