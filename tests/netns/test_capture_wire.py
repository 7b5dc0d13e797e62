"""``--capture`` in netns mode: the pcapng writer alone, then a real TCP connection across a
shaper whose capture tshark reads back (handshake, direction, delay between SYN and SYN-ACK)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import dpkt
import pytest
import trio

from emulator.netns.wire_capture import DROPPED, WireRecorder
from tests.netns.handmade import missing, namespaces, shaper_between, socket_in

NO_TSHARK = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (Debian)")


def tshark(path: Path, *fields: str, display: str = "") -> list[list[str]]:
    argv = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|"]
    argv += [a for f in fields for a in ("-e", f)]
    done = subprocess.run(argv + (["-Y", display] if display else []), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [line.split("|") for line in done.stdout.splitlines()]


def syn_frame(src: str, dst: str, flags: int) -> bytes:
    tcp = dpkt.tcp.TCP(sport=40000, dport=80, flags=flags, seq=1)
    packet = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, data=tcp)
    packet.len = len(packet)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, data=packet))


@NO_TSHARK
def test_recorder_writes_what_tshark_reads(tmp_path: Path) -> None:
    path = tmp_path / "capture-x.pcapng"
    recorder = WireRecorder(path, "x", "alice", "bob")
    recorder("ab", 1000.000000001, syn_frame("10.0.0.1", "10.0.0.2", dpkt.tcp.TH_SYN), True)
    recorder("ba", 1000.5, syn_frame("10.0.0.2", "10.0.0.1",
                                     dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK), False)
    recorder.close()
    rows = tshark(path, "frame.interface_id", "frame.time_epoch", "ip.src", "tcp.flags.syn",
                  "tcp.flags.ack", "frame.comment")
    assert [r[0] for r in rows] == ["0", "1"]
    assert rows[0][1].startswith("1000.000000001")  # nanosecond timestamps
    assert rows[0][2:5] == ["10.0.0.1", "1", "0"] and rows[0][5] == ""
    assert rows[1][2:5] == ["10.0.0.2", "1", "1"] and rows[1][5] == DROPPED
    assert [r[0] for r in tshark(path, "frame.interface_name")] == ["x:alice->bob",
                                                                    "x:bob->alice"]


async def tcp_exchange(names: list[str], payload: bytes) -> bytes:
    """Client in the first namespace sends ``payload`` to a server in the second (echoed)."""
    listener = socket_in(names[1])
    listener.bind(("10.9.0.2", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket_in(names[0])
    server = trio.SocketListener(trio.socket.from_stdlib_socket(listener))
    got = bytearray()
    async with server, trio.open_nursery() as nursery:
        async def serve_one() -> None:
            stream = await server.accept()
            async with stream:
                async for chunk in stream:
                    await stream.send_all(chunk)

        nursery.start_soon(serve_one)
        sock = trio.socket.from_stdlib_socket(client)
        await sock.connect(("10.9.0.2", port))
        stream = trio.SocketStream(sock)
        async with stream:
            await stream.send_all(payload)
            await stream.send_eof()
            async for chunk in stream:
                got += chunk
    return bytes(got)


@pytest.mark.skipif(missing("tshark") is not None, reason=str(missing("tshark")))
def test_wire_capture_shows_the_tcp_handshake(tmp_path: Path) -> None:
    delay = 0.005
    capture = tmp_path / "capture-n0-n1.pcapng"
    payload = bytes(range(256)) * 64

    async def main() -> bytes:
        async with shaper_between(names, tmp_path, delay_s=delay, capture=str(capture)):
            with trio.fail_after(20):
                return await tcp_exchange(names, payload)

    with namespaces(2) as names:
        assert trio.run(main) == payload
    rows = tshark(capture, "frame.interface_id", "frame.time_epoch", "ip.src", "ip.dst",
                  display="tcp.flags.syn == 1")
    assert [(r[0], r[2], r[3]) for r in rows] == [("0", "10.9.0.1", "10.9.0.2"),
                                                  ("1", "10.9.0.2", "10.9.0.1")], rows
    # each frame is stamped when delivered: the SYN-ACK one delay after the SYN
    gap = float(rows[1][1]) - float(rows[0][1])
    assert delay <= gap < delay + 0.05, gap
    data = tshark(capture, "tcp.len", display="tcp.len > 0 && ip.src == 10.9.0.1")
    assert sum(int(r[0]) for r in data) == len(payload)


def test_recorder_stops_at_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "capture-y.pcapng"
    frame = syn_frame("10.0.0.1", "10.0.0.2", dpkt.tcp.TH_SYN)
    recorder = WireRecorder(path, "y", "a", "b", max_bytes=1000)
    for i in range(50):
        recorder("ab", 1000.0 + i, frame, True)
    recorder.close()
    assert path.stat().st_size <= 1000 and recorder.frames > 0
    assert recorder.frames + recorder.truncated == 50
    with path.open("rb") as handle:
        assert sum(1 for _ in dpkt.pcapng.Reader(handle)) == recorder.frames
