"""``qnet run --capture``: the relay writes what it delivers as pcapng (emulator.capture).

The frames are checked with dpkt (test extra: checksums, TCP sequence numbers), then opened
with tshark and the shipped dissector (skipped, with the reason, when tshark is absent).
"""

from __future__ import annotations

import shutil
import signal
import struct
import subprocess
from pathlib import Path

import pytest
import trio

from emulator.capture import Host, PcapngWriter, checksum, tcp_frame, udp_frame
from emulator.child_config import Direction
from emulator.relay import serve
from nodes.net.header import HeaderCodec, HybridHeader, PayloadDescriptor
from tests.test_relay import HOST, open_node, recv_all, relay_config, relay_process, settled

dpkt = pytest.importorskip("dpkt", reason="dpkt (test extra) reads the capture back")
TSHARK = shutil.which("tshark")
REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "wireshark" / "qnet_hybrid.lua"
CODEC = HeaderCodec(b"k" * 32)


def frames(path: Path) -> list[tuple[float, dpkt.ethernet.Ethernet]]:
    with path.open("rb") as fh:
        return [(ts, dpkt.ethernet.Ethernet(buf)) for ts, buf in dpkt.pcapng.Reader(fh)]


def test_checksum_of_a_known_ipv4_header() -> None:
    # RFC 1071 example header (checksum field zeroed): 0xB861
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert checksum(header) == 0xB861


def test_frames_parse_with_valid_checksums(tmp_path: Path) -> None:
    a, b = Host.numbered(1), Host.numbered(2)
    path = tmp_path / "x.pcapng"
    writer = PcapngWriter(path, max_bytes=1 << 20, comment="test", interface="a-b")
    writer.write(1.0, udp_frame(a, b, 4000, 5000, b"odd length!"))
    writer.write(2.0, tcp_frame(b, a, 5001, 4001, 7, 9, 0x18, b"xyz"))
    writer.close()
    (t1, udp), (t2, tcp) = frames(path)
    assert (t1, t2) == (1.0, 2.0)
    for eth in (udp, tcp):
        ip = eth.data
        raw = bytes(ip)
        assert checksum(raw[:20]) == 0  # a header with its checksum sums to 0xFFFF
        pseudo = ip.src + ip.dst + struct.pack("!BBH", 0, ip.p, len(raw) - 20)
        assert checksum(pseudo + raw[20:]) == 0
    assert (udp.data.data.data, udp.data.data.sport, udp.data.data.dport) == (
        b"odd length!", 4000, 5000)
    assert (tcp.data.data.seq, tcp.data.data.ack, tcp.data.data.data) == (7, 9, b"xyz")
    assert udp.data.src == bytes([10, 0, 0, 1]) and tcp.data.src == bytes([10, 0, 0, 2])


def test_the_file_stops_at_max_bytes_and_counts_the_rest(tmp_path: Path) -> None:
    a, b = Host.numbered(1), Host.numbered(2)
    writer = PcapngWriter(tmp_path / "x.pcapng", max_bytes=2000)
    written = [writer.write(float(i), udp_frame(a, b, 1, 2, b"." * 100)) for i in range(30)]
    writer.close()
    assert writer.truncated == written.count(False) > 0
    assert (tmp_path / "x.pcapng").stat().st_size == writer.size <= 2000
    assert len(frames(tmp_path / "x.pcapng")) == writer.packets == written.count(True)


async def exchange(relay, a, b) -> list[bytes]:
    """TCP both ways (one chunk larger than an IPv4 packet) and hybrid headers over UDP."""
    headers = [CODEC.encode(HybridHeader("alice", "bob", flow=3, seq=i, ttl=4,
                                         timestamp_ns=i * 1000,
                                         payload=PayloadDescriptor(kind=2, qubits=1,
                                                                   payload_id=i)))
               for i in range(3)]
    stream = await trio.open_tcp_stream(HOST, relay.listen["a"]["tcp"])
    peer = await b.listener.accept()
    big = bytes(range(256)) * 400  # 102400 bytes: split into two IPv4 packets at least
    await stream.send_all(big)
    assert await recv_all(peer, len(big)) == big
    await peer.send_all(b"reply")
    assert await recv_all(stream, 5) == b"reply"
    for h in headers:
        await a.udp.sendto(h, (HOST, relay.listen["a"]["udp"]))
    with trio.fail_after(5):
        for h in headers:
            assert await b.udp.recv(2048) == h
    await stream.aclose()
    await peer.aclose()
    await settled()
    return headers


async def test_relay_captures_tcp_and_udp_consistently(tmp_path: Path) -> None:
    a, b = await open_node(), await open_node()
    path = tmp_path / "capture-a-b.pcapng"
    config = relay_config(a, b, Direction(), capture=str(path))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            relay = await nursery.start(serve, config)
            headers = await exchange(relay, a, b)
            relay.request_stop()
    got = frames(path)
    udp = [eth.data.data for _, eth in got if eth.data.p == dpkt.ip.IP_PROTO_UDP]
    assert [u.data for u in udp] == headers
    assert {(u.sport, u.dport) for u in udp} == {(a.endpoint.udp, b.endpoint.udp)}
    tcp = [eth.data.data for _, eth in got if eth.data.p == dpkt.ip.IP_PROTO_TCP]
    syn, syn_ack = tcp[0], tcp[1]
    assert syn.flags == dpkt.tcp.TH_SYN and syn_ack.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK
    assert syn_ack.sport == b.endpoint.tcp
    client = [s for s in tcp if s.dport == b.endpoint.tcp and s.data]
    server = [s for s in tcp if s.sport == b.endpoint.tcp and s.data]
    assert b"".join(s.data for s in client) == bytes(range(256)) * 400
    assert b"".join(s.data for s in server) == b"reply"
    seq = syn.seq + 1
    for s in client:  # consecutive sequence numbers, never a gap or an overlap
        assert s.seq == seq
        seq += len(s.data)
    assert server[0].ack == seq  # the reply acknowledges everything the client sent
    assert sum(1 for s in tcp if s.flags & dpkt.tcp.TH_FIN) == 2


async def test_sigterm_flushes_the_capture(tmp_path: Path) -> None:
    """A relay process stopped by SIGTERM leaves a complete, readable file."""
    a, b = await open_node(), await open_node()
    path = tmp_path / "capture.pcapng"
    config = relay_config(a, b, Direction(), capture=str(path))
    async with relay_process(config, tmp_path) as (proc, listen):
        with trio.fail_after(15):
            for i in range(5):
                await a.udp.sendto(b"datagram %d" % i, (HOST, listen["a"]["udp"]))
                assert await b.udp.recv(100) == b"datagram %d" % i
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    assert [eth.data.data.data for _, eth in frames(path)] == [b"datagram %d" % i
                                                               for i in range(5)]


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")
async def test_tshark_opens_it_and_the_dissector_decodes_headers(tmp_path: Path) -> None:
    a, b = await open_node(), await open_node()
    path = tmp_path / "capture-a-b.pcapng"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            relay = await nursery.start(serve, relay_config(a, b, Direction(), capture=str(path)))
            await exchange(relay, a, b)
            relay.request_stop()
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin"}
    plain = subprocess.run([TSHARK, "-r", str(path), "-q", "-z", "conv,tcp"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0, plain.stderr
    assert "10.0.0.1" in plain.stdout and "10.0.0.2" in plain.stdout
    out = subprocess.run([TSHARK, "-X", f"lua_script:{SCRIPT}", "-r", str(path), "-Y",
                          "qnet_hybrid", "-T", "fields", "-E", "separator=|", "-e",
                          "qnet_hybrid.src", "-e", "qnet_hybrid.dst", "-e", "qnet_hybrid.seq"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"alice|bob|{i}" for i in range(3)]
