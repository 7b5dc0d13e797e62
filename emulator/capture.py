"""pcapng capture of traffic that was never framed: UDP datagrams and TCP byte-stream chunks
become Ethernet/IPv4/UDP or TCP frames between two synthetic hosts, so Wireshark shows the
conversation (and the hybrid-header dissector, tools/wireshark/qnet_hybrid.lua, decodes it).

No relay dependency; the file is written by ``emulator.pcapng.PcapngWriter`` (re-exported
here). IPv4, UDP and TCP checksums are real (RFC 791/768/793). A TCP stream gets a handshake, data
segments with consistent sequence and acknowledgement numbers (a chunk larger than one IPv4
packet is split), and a FIN each way on close.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

import numpy as np

from emulator.pcapng import PcapngWriter

__all__ = ["Host", "PcapngWriter", "TcpFlow", "checksum", "tcp_frame", "udp_frame"]

MAX_TCP_SEGMENT = 65535 - 20 - 20  # the most one IPv4 packet carries after IP and TCP headers
MAX_UDP_PAYLOAD = 65535 - 20 - 8
TCP_FIN, TCP_SYN, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x08, 0x10


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum."""
    if len(data) % 2:
        data += b"\0"
    total = int(np.frombuffer(data, dtype=">u2").sum(dtype=np.uint64))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass(frozen=True)
class Host:
    """A synthetic host of a capture: its MAC and IPv4 address."""

    mac: bytes
    ip: bytes

    @classmethod
    def numbered(cls, n: int, network: str = "10.0.0.0") -> Host:
        """Host ``n`` (1, 2, ...): MAC 02:00:00:00:00:n (locally administered), IP network+n."""
        ip = ipaddress.IPv4Address(int(ipaddress.IPv4Address(network)) + n).packed
        return cls(bytes([2, 0, 0, 0, (n >> 8) & 0xFF, n & 0xFF]), ip)

    @property
    def address(self) -> str:
        return str(ipaddress.IPv4Address(self.ip))


def _ipv4(src: Host, dst: Host, proto: int, segment: bytes, ident: int) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), ident & 0xFFFF, 0x4000,
                         64, proto, 0, src.ip, dst.ip)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return dst.mac + src.mac + b"\x08\x00" + header + segment


def _pseudo(src: Host, dst: Host, proto: int, length: int) -> bytes:
    return src.ip + dst.ip + struct.pack("!BBH", 0, proto, length)


def udp_frame(src: Host, dst: Host, sport: int, dport: int, payload: bytes,
              ident: int = 0) -> bytes:
    """One Ethernet/IPv4/UDP frame carrying ``payload`` (at most ``MAX_UDP_PAYLOAD`` bytes)."""
    length = 8 + len(payload)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    value = checksum(_pseudo(src, dst, 17, length) + header + payload) or 0xFFFF
    return _ipv4(src, dst, 17, header[:6] + struct.pack("!H", value) + payload, ident)


def tcp_frame(src: Host, dst: Host, sport: int, dport: int, seq: int, ack: int, flags: int,
              payload: bytes = b"", ident: int = 0) -> bytes:
    """One Ethernet/IPv4/TCP segment (20-byte header, window 65535)."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                         5 << 4, flags, 65535, 0, 0)
    value = checksum(_pseudo(src, dst, 6, len(header) + len(payload)) + header + payload)
    header = header[:16] + struct.pack("!H", value) + header[18:]
    return _ipv4(src, dst, 6, header + payload, ident)


class TcpFlow:
    """One TCP connection between ``client`` and ``server`` as a capture shows it: each side's
    next sequence number, so segments acknowledge everything the other side sent."""

    def __init__(self, writer: PcapngWriter, client: tuple[Host, int],
                 server: tuple[Host, int], isn: tuple[int, int] = (1000, 5000)) -> None:
        self.writer = writer
        self.ends = {"client": client, "server": server}
        self.next_seq = {"client": isn[0], "server": isn[1]}
        self.ident = 0
        self.closed = False

    def _send(self, side: str, ts: float, flags: int, payload: bytes = b"") -> None:
        other = "server" if side == "client" else "client"
        (src, sport), (dst, dport) = self.ends[side], self.ends[other]
        ack = self.next_seq[other] if flags & TCP_ACK else 0
        self.ident += 1
        self.writer.write(ts, tcp_frame(src, dst, sport, dport, self.next_seq[side], ack,
                                        flags, payload, self.ident))
        self.next_seq[side] += len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)

    def open(self, ts: float) -> None:
        """The three-way handshake."""
        self._send("client", ts, TCP_SYN)
        self._send("server", ts, TCP_SYN | TCP_ACK)
        self._send("client", ts, TCP_ACK)

    def data(self, side: str, ts: float, payload: bytes) -> None:
        """``payload`` from ``side`` ("client"/"server"), in segments of one IPv4 packet each."""
        for i in range(0, len(payload), MAX_TCP_SEGMENT):
            self._send(side, ts, TCP_PSH | TCP_ACK, payload[i:i + MAX_TCP_SEGMENT])

    def close(self, ts: float) -> None:
        """A FIN each way and the last ACK (once)."""
        if self.closed:
            return
        self.closed = True
        self._send("client", ts, TCP_FIN | TCP_ACK)
        self._send("server", ts, TCP_FIN | TCP_ACK)
        self._send("client", ts, TCP_ACK)
