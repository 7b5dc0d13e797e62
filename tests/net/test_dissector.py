"""The shipped Wireshark dissector decodes hybrid headers from a pcapng that dpkt writes.

Skips (with the reason) when tshark is not installed; CI installs it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from nodes.net.header import HeaderCodec, HybridHeader, PayloadDescriptor, PolarisationReference

dpkt = pytest.importorskip("dpkt", reason="dpkt (test extra) writes the capture")
TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed "
                                "(apt-get install tshark)")
SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "wireshark" / "qnet_hybrid.lua"
CODEC = HeaderCodec(b"k" * 32)
HEADERS = [
    HybridHeader("alice", "bob", flow=7, seq=1, ttl=8, timestamp_ns=1_000_000,
                 payload=PayloadDescriptor(kind=2, qubits=1, payload_id=41)),
    HybridHeader("router-1", "charlie", flow=9, seq=2**40, ttl=3, timestamp_ns=2_500_000,
                 payload=PayloadDescriptor(kind=1, flags=1, qubits=1, payload_id=42),
                 pol_ref=PolarisationReference(0.0, 0.0, -1.0)),
]


def _udp_frame(payload: bytes, sport: int, dport: int) -> bytes:
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=socket.inet_aton("127.0.0.1"), dst=socket.inet_aton("127.0.0.2"),
                    p=dpkt.ip.IP_PROTO_UDP, data=udp)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6,
                                        type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    path = tmp_path / "hybrid.pcapng"
    frames = [CODEC.encode(h) for h in HEADERS]
    frames.append(CODEC.encode(HEADERS[0])[:-5])  # cut inside the MAC: malformed
    frames.append(b"just some other UDP traffic")
    good = CODEC.encode(HEADERS[0])
    frames += [  # odd but heuristic-matching datagrams: flagged, never a Lua error
        b"QH\x01\x00\x01\x01", good + b"\x00", good[:6] + b"\x02\x00\x00" + good[6:],
        good[:6] + b"\x42\x00\x01?" + good[6:], good[:6] + b"\x04\x00\x01\x07" + good[6:],
        good[:6] + b"\x90\x00\x03ext" + good[6:], b"QH\x01\x00\x01\x01\x06"]
    with path.open("wb") as fh:
        writer = dpkt.pcapng.Writer(fh)
        for i, frame in enumerate(frames):
            writer.writepkt(_udp_frame(frame, 40000 + i, 50000 + i), ts=1.0 + i / 1000)
    return path


def _tshark(tmp_path: Path, *args: str) -> str:
    proc = subprocess.run([TSHARK, "-X", f"lua_script:{SCRIPT}", *args], capture_output=True,
                          text=True, timeout=60, env={"HOME": str(tmp_path), "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "Lua: Error" not in proc.stderr and "lua_script" not in proc.stderr, proc.stderr
    return proc.stdout


def test_fields_are_decoded(capture, tmp_path):
    out = _tshark(tmp_path, "-r", str(capture), "-T", "fields", "-E", "separator=|",
                  "-e", "qnet_hybrid.version", "-e", "qnet_hybrid.src", "-e", "qnet_hybrid.dst",
                  "-e", "qnet_hybrid.flow", "-e", "qnet_hybrid.seq", "-e", "qnet_hybrid.ttl",
                  "-e", "qnet_hybrid.timestamp_ns", "-e", "qnet_hybrid.payload.kind",
                  "-e", "qnet_hybrid.payload.lost", "-e", "qnet_hybrid.payload.id",
                  "-e", "qnet_hybrid.pol.s3")
    bools = {"0": "False", "1": "True"}  # tshark < 4.2 prints booleans as 0/1
    rows = [[bools.get(v, v) if i == 8 else v for i, v in enumerate(line.split("|"))]
            for line in out.splitlines()]
    assert rows[0] == ["1", "alice", "bob", "7", "1", "8", "1000000", "2", "False", "41", "0"]
    assert rows[1] == ["1", "router-1", "charlie", "9", str(2**40), "3", "2500000", "1",
                       "True", "42", "-1"]
    assert rows[3] == [""] * 11  # not ours: the heuristic leaves it alone


def test_verbose_tree_and_malformed_packet(capture, tmp_path):
    out = _tshark(tmp_path, "-r", str(capture), "-V")
    packets = out.split("\nFrame ")
    assert len(packets) == 11
    assert "Lua Error" not in out
    first = packets[0]
    for text in ("qnet hybrid-packet header", "Source node: alice", "Destination node: bob",
                 "Flow: 7", "TTL: 8", "Payload kind: half of an entangled pair (2)",
                 "Reference S1: 1", "MAC (HMAC-SHA256/16, not verified)"):
        assert text in first, text
    assert "Group: Malformed" not in first
    assert "TLV type 255 runs past the end" in packets[2]
    assert "Group: Malformed" in packets[2]
    assert "qnet hybrid" not in packets[3]
    for i, text in ((4, "no MAC TLV"), (5, "bytes after the MAC"), (7, "unknown TLV type 66"),
                    (8, "duplicate TLV type 4"), (10, "truncated TLV")):
        assert text in packets[i], (i, packets[i])
    assert "Extension value: 657874" in packets[9] and "Group: Malformed" not in packets[9]


def test_info_column(capture, tmp_path):
    out = _tshark(tmp_path, "-r", str(capture), "-T", "fields", "-e", "_ws.col.Info")
    assert out.splitlines()[0] == "alice -> bob flow 7 seq 1 ttl 8"
