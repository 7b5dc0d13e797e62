"""What peers can make the daemon process hold: partial frames and floods of short connections
leave its RSS within 50 MB of before and its open file descriptors back where they were.

The daemon runs as a subprocess (``python -m emulator.daemon``); RSS and fds come from its
``/proc/<pid>/status`` and ``/proc/<pid>/fd``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import trio

from emulator.child_config import DaemonConfig, DaemonLink, write_config
from emulator.daemon import protocol as p
from emulator.daemon.session import SessionLimits
from emulator.scenario import QuantumLink, Source
from emulator.wire import HEADER, FramedStream

TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}
ROOT = Path(__file__).resolve().parents[2]
RSS_SLACK_KB = 50 * 1024
CONNECTIONS = 20_000
DIALERS = 16


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def settle(pid: int, fd_target: int, timeout: float = 10.0) -> int:
    """Wait (bounded) until the daemon's fd count is back to ``fd_target``; returns it."""
    with trio.move_on_after(timeout):
        while fds(pid) > fd_target:
            await trio.sleep(0.05)
    return fds(pid)


async def hello(port: int, node: str) -> FramedStream:
    framed = FramedStream(await trio.open_tcp_stream("127.0.0.1", port), p.MAX_FRAME)
    await framed.send(p.encoder.encode(p.Hello(p.PROTOCOL_VERSION, node, TOKENS[node])))
    assert isinstance(p.reply_decoder.decode(await framed.receive()), p.Welcome)
    return framed


@pytest.fixture
async def daemon_process(tmp_path: Path):
    quantum = QuantumLink(source=Source(rate_hz=1e6, mu=0.5), frame_ms=10.0)
    config = DaemonConfig("test", time.time(), 1.0, 1, dict(TOKENS),
                          [DaemonLink("alice-bob", "alice", "bob", 10.0, quantum)])
    config_path, ready = tmp_path / "daemon.json", tmp_path / "ready.json"
    write_config(config_path, config)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "emulator.daemon", "--config", str(config_path),
         "--ready-file", str(ready)], cwd=ROOT)
    try:
        with trio.fail_after(15):
            while not ready.exists():
                assert process.poll() is None, "daemon exited before it was ready"
                await trio.sleep(0.05)
        yield process, json.loads(ready.read_text())["port"]
    finally:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()
        if process.poll() is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None


async def test_partial_maximum_frames_are_released(daemon_process):
    process, port = daemon_process
    fd0 = fds(process.pid)
    await (await hello(port, "alice")).aclose()  # first allocations of a served connection
    assert await settle(process.pid, fd0) == fd0
    rss0 = rss_kb(process.pid)
    small = SessionLimits().unauthenticated_max_frame
    streams = []
    # 40 unauthenticated peers: each a frame of the pre-hello maximum, all but its last byte
    for _ in range(40):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(HEADER.pack(small) + b"\x00" * (small - 1))
        streams.append(stream)
    # 40 authenticated nodes: each a frame of the daemon's maximum, all but its last byte
    body = b"\x00" * (p.MAX_FRAME - 1)
    for i in range(40):
        framed = await hello(port, "alice" if i % 2 else "bob")
        await framed.stream.send_all(HEADER.pack(p.MAX_FRAME) + body)
        streams.append(framed.stream)
    held = rss_kb(process.pid)
    for stream in streams:
        await stream.aclose()
    fd1 = await settle(process.pid, fd0)
    await trio.sleep(0.2)
    rss1 = rss_kb(process.pid)
    print(f"RSS before {rss0} kB, with 80 partial frames {held} kB, after {rss1} kB; "
          f"fds {fd0} -> {fd1}")
    assert fd1 == fd0
    assert rss1 - rss0 < RSS_SLACK_KB


async def test_twenty_thousand_short_connections(daemon_process):
    process, port = daemon_process
    fd0 = fds(process.pid)
    await (await hello(port, "alice")).aclose()
    assert await settle(process.pid, fd0) == fd0
    rss0 = rss_kb(process.pid)
    done = 0
    t0 = time.monotonic()

    async def dialer(k: int) -> None:
        nonlocal done
        for i in range(CONNECTIONS // DIALERS):
            if i % 10 == 0:  # some authenticate and ask once; the rest just come and go
                framed = await hello(port, "alice")
                await framed.send(p.encoder.encode(p.StatsRequest(i)))
                assert isinstance(p.reply_decoder.decode(await framed.receive()), p.Stats)
                await framed.aclose()
            else:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.aclose()
            done += 1

    with trio.fail_after(50):
        async with trio.open_nursery() as nursery:
            for k in range(DIALERS):
                nursery.start_soon(dialer, k)
    elapsed = time.monotonic() - t0
    fd1 = await settle(process.pid, fd0)
    rss1 = rss_kb(process.pid)
    print(f"{done} connections in {elapsed:.1f} s; RSS {rss0} -> {rss1} kB; fds {fd0} -> {fd1}")
    assert done == CONNECTIONS // DIALERS * DIALERS
    assert fd1 == fd0
    assert rss1 - rss0 < RSS_SLACK_KB
