"""An ICMP echo stream (what ``ping -i`` does) with its own count of lost and late replies.

Raw socket (root), one identifier per stream; requests go out at a fixed interval whatever the
replies do, and a reply counts if it arrives within ``timeout_s`` of its request.
"""

from __future__ import annotations

import os
import socket
import statistics
import struct

import trio

ECHO_REQUEST, ECHO_REPLY = 8, 0


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(header + payload), ident,
                       seq) + payload


def parse_reply(packet: bytes, ident: int) -> int | None:
    """The sequence number of an echo reply to stream ``ident`` in an IPv4 packet, else None."""
    if len(packet) < 20:
        return None
    start = (packet[0] & 0x0F) * 4
    if len(packet) < start + 8:
        return None
    kind, _, _, got_ident, seq = struct.unpack_from("!BBHHH", packet, start)
    return seq if kind == ECHO_REPLY and got_ident == ident else None


class PingStream:
    """Sends echo requests to ``address`` every ``interval_s`` until ``stop()``; then ``summary``."""

    def __init__(self, address: str, interval_s: float, timeout_s: float) -> None:
        self.address, self.interval_s, self.timeout_s = address, interval_s, timeout_s
        self.ident = os.getpid() & 0xFFFF
        self.sent: dict[int, float] = {}
        self.rtt: dict[int, float] = {}
        self._stop = trio.Event()
        self._all_in = trio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        with sock:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, sock)
                seq = 0
                with trio.move_on_after(float("inf")) as sending:
                    nursery.start_soon(self._stopper, sending)
                    while True:
                        self.sent[seq] = trio.current_time()
                        await sock.sendto(echo_request(self.ident, seq & 0xFFFF, b"qnet" * 14),
                                          (self.address, 0))
                        seq += 1
                        await trio.sleep(self.interval_s)
                if len(self.rtt) < len(self.sent):
                    with trio.move_on_after(self.timeout_s):
                        await self._all_in.wait()
                nursery.cancel_scope.cancel()

    async def _stopper(self, sending: trio.CancelScope) -> None:
        await self._stop.wait()
        sending.cancel()

    async def _receive(self, sock) -> None:
        while True:
            packet = await sock.recv(65535)
            now = trio.current_time()
            seq = parse_reply(packet, self.ident)
            if seq is None or seq not in self.sent or seq in self.rtt:
                continue
            if now - self.sent[seq] <= self.timeout_s:
                self.rtt[seq] = now - self.sent[seq]
            if self._stop.is_set() and len(self.rtt) == len(self.sent):
                self._all_in.set()

    def summary(self) -> dict:
        rtts = sorted(self.rtt.values())
        return {"sent": len(self.sent), "received": len(self.rtt),
                "lost": len(self.sent) - len(self.rtt), "interval_s": self.interval_s,
                "rtt_ms_median": round(statistics.median(rtts) * 1e3, 3) if rtts else None,
                "rtt_ms_max": round(rtts[-1] * 1e3, 3) if rtts else None}
