"""End to end: a stranger on loopback attacks a running quickstart; the run must not notice.

During ``qnet run scenarios/quickstart.toml`` (post-processing on, so both ends hold keys) the
test sends, to Bob's listener and through the relay: a 4 GiB frame header, a TCP reset, 3000
random bytes, a ChannelHello holding deeply nested msgpack, thousands of connections with
hellos that never authenticate, silent connections beyond the cap, spoofed hellos naming
Alice for the real channel (in the start-up window and at random times later), and foreign
UDP datagrams to the relay; and to the quantum daemon: a 4 GiB frame header, random bytes, a
reset, a hello with deeply nested msgpack, a hello with a wrong token, and 40 partial frames at
the pre-authentication limit held open. Then: exit 0, identical keys, every attack counted in
result.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import struct
import time
from pathlib import Path

import msgspec
import pytest
import trio
from qnet_process import ROOT, alive, start_qnet

from emulator.wire import HEADER, frame

pytestmark = pytest.mark.e2e

QUICKSTART = str(ROOT / "scenarios" / "quickstart.toml")
KEYS_ON = ["--set", "links.0.quantum.source.decoys=[0.1, 0.0]",
           "--set", "links.0.quantum.source.probabilities=[0.8, 0.1, 0.1]",
           "--set", "apps.0.postprocessing=true", "--set", "apps.0.block_bits=1000000"]
CHANNEL = "qkd.bb84/alice-bob"
HOST = "127.0.0.1"
FLOOD = 1000  # unauthenticated hellos per path
DURATION_S = 8  # the attacks took 3.1 s on a quiet 2-core machine, 6.0 s on a loaded one
SILENT = 80  # silent connections held open at Bob (his cap is 64 awaiting a hello)
DAEMON_PARTIAL = 40  # partial frames held open at the daemon (its cap is 64 awaiting a hello)
DAEMON_PREAUTH_FRAME = 4096  # the daemon's frame limit before a hello is authenticated


def daemon_hello(node: str, token: str, nested: int = 0) -> bytes:
    """A daemon Hello (wrong token), optionally with its ``node`` nested ``nested`` deep."""
    if nested:
        body = (b"\x84\xa4type\xa5hello\xa7version\x01\xa4node" + b"\x91" * nested
                + b"\xc0\xa5token\xa1x")
        return frame(body)
    return frame(msgspec.msgpack.encode({"type": "hello", "version": 1, "node": node,
                                         "token": token}))


def old_hello(node: str, channel: str) -> bytes:
    """The hello that replaced the real channel before hellos were authenticated."""
    return frame(msgspec.msgpack.encode({"type": "channel_hello", "node": node,
                                         "channel": channel}))


def forged_hello(node: str, to: str, channel: str) -> bytes:
    return frame(msgspec.msgpack.encode({"type": "channel_hello", "node": node, "to": to,
                                         "channel": channel, "nonce": os.urandom(16),
                                         "mac": os.urandom(32)}))


def nested_hello(depth: int = 100_000) -> bytes:
    body = b"\x84\xa4type\xadchannel_hello\xa4node" + b"\x91" * depth + b"\xc0"
    return frame(body + b"\xa2to\xa3bob\xa7channel\xa1x")


async def attack(port: int, data: bytes, *, reset: bool = False) -> None:
    """One hostile connection: send ``data``, then reset or close."""
    with contextlib.suppress(OSError, trio.BrokenResourceError):
        stream = await trio.open_tcp_stream(HOST, port)
        with contextlib.suppress(trio.BrokenResourceError):
            await stream.send_all(data)
        if reset:
            stream.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER,
                              struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(stream)


async def wait_file(path: Path, process) -> dict:
    with trio.fail_after(30):
        while not path.exists():
            assert process.poll() is None, process.communicate()
            await trio.sleep(0.02)
    return json.loads(path.read_text())


async def test_attacks_during_a_run_are_counted_and_change_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    rng = random.Random(8)
    process = start_qnet("run", QUICKSTART, "--duration", str(DURATION_S), "--run-dir", str(run_dir),
                         "--no-progress", *KEYS_ON)
    silent: list[trio.SocketStream] = []
    try:
        relay = (await wait_file(run_dir / "relay-alice-bob.ready.json", process))["listen"]
        bob = await wait_file(run_dir / "bob.ready.json", process)
        daemon_port = (await wait_file(run_dir / "daemon.ready.json", process))["port"]
        direct, via_relay = bob["tcp"]["alice"], relay["a"]["tcp"]  # both end at Bob
        started = trio.current_time()
        spoofs = 0

        async def spoof_at(delay: float, port: int) -> None:
            nonlocal spoofs
            await trio.sleep(delay)
            spoofs += 1
            hello = old_hello if spoofs % 2 else (lambda n, c: forged_hello(n, "bob", c))
            await attack(port, hello("alice", CHANNEL))

        async with trio.open_nursery() as nursery:
            for port in (direct, via_relay):  # in the start-up window, and later at random
                for _ in range(3):
                    nursery.start_soon(spoof_at, rng.uniform(0.0, 0.3), port)
                for _ in range(3):
                    nursery.start_soon(spoof_at, rng.uniform(0.3, 3.0), port)
            await trio.sleep(0.5)
            for port in (direct, via_relay):
                await attack(port, HEADER.pack(0xFFFFFFFF))
                await attack(port, b"\x00\x00\x10", reset=True)
                await attack(port, os.urandom(3000))
                await attack(port, nested_hello())
            await attack(daemon_port, HEADER.pack(0xFFFFFFFF))
            await attack(daemon_port, os.urandom(3000))
            await attack(daemon_port, b"\x00\x00\x10", reset=True)
            await attack(daemon_port, daemon_hello("bob", "", nested=4000))  # fits 4 KiB
            await attack(daemon_port, daemon_hello("bob", "0" * 32))
            for _ in range(DAEMON_PARTIAL):  # just under the limit, never completed
                stream = await trio.open_tcp_stream(HOST, daemon_port)
                await stream.send_all(HEADER.pack(DAEMON_PREAUTH_FRAME) + b"\x00" * 4000)
                silent.append(stream)
            udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await udp.bind((HOST, 0))
            for side in ("a", "b"):
                for _ in range(50):
                    await udp.sendto(os.urandom(64), (HOST, relay[side]["udp"]))
            udp.close()

            async def flood(port: int, count: int) -> None:
                for i in range(count):  # half malformed (old style), half with forged MACs
                    make = old_hello if i % 2 else (lambda n, c: forged_hello(n, "bob", c))
                    await attack(port, make("alice", f"never-accepted-{i}"))

            for port in (direct, via_relay):
                for _ in range(4):
                    nursery.start_soon(flood, port, FLOOD // 4)
        for _ in range(SILENT):
            silent.append(await trio.open_tcp_stream(HOST, direct))
        attacks_s, attacks_end = trio.current_time() - started, time.time()
        with trio.fail_after(120):
            out, err = await trio.to_thread.run_sync(process.communicate)
    finally:
        for stream in silent:
            await trio.aclose_forcefully(stream)
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, out + err
    result = json.loads((run_dir / "result.json").read_text())
    (start,) = [e for e in result["events"] if e["kind"] == "start"]
    apps_end = start["wall"] + DURATION_S / result["time_scale"]
    assert attacks_end < apps_end, f"attacks ({attacks_s:.1f} s) outlasted the apps: counts incomplete"
    (qkd,) = result["qkd"]
    assert qkd["key_sha256_a"] == qkd["key_sha256_b"] and qkd["secret_bits"] > 0
    assert qkd["auth_rejected"] == 0 and qkd["blocks_failed"] == 0
    counters = {p["name"]: p["counters"] or {} for p in result["processes"]}
    assert {p["exit_code"] for p in result["processes"] if p["role"] in ("node", "relay")} == {0}
    assert not [p for p in result["processes"] if alive(p["pid"])], "a process outlived the run"
    c = counters["bob"]
    print(f"attacks took {attacks_s:.1f} s\nbob: {c}\nrelay: {counters['relay-alice-bob']}")
    assert c["channels_accepted"] == 1  # the real one, never replaced
    # every hostile connection ended in some rejection: forged MACs, malformed hellos (old
    # style, 4 GiB header, nesting, random bytes), resets, or the cap of 64 awaiting a hello
    # (a busy node lets floods queue up: those are closed unread)
    faults = {k: v for k, v in c.items()
              if k not in ("connections", "channels_accepted", "telemetry_rejected")}
    # (silent ones still waiting when the result was published are not counted yet)
    assert sum(faults.values()) >= 2 * FLOOD + 12 + 8 + SILENT - 64
    assert c["connections"] >= 1 + 2 * FLOOD + 12 + 8 + SILENT
    assert c["spoofed_hellos"] > 0 and c["bad_hellos"] > 0
    assert c["rejected_connections"] >= SILENT - 64
    events = [e for e in result["events"] if e.get("kind") == "transport_fault"]
    assert {e.get("counter") for e in events if e.get("node") == "bob"} >= {
        "spoofed_hellos", "bad_hellos", "rejected_connections"}  # first of each kind only
    assert len(events) <= 2 * len(faults)
    d = counters["daemon"]
    print(f"daemon: {d}")
    # over the pre-auth limit: the 4 GiB header, random bytes (their first 4 are a length);
    # the nested hello fits the limit and fails decoding
    assert d["rejected_too_large"] >= 2 and d["rejected_bad_frame"] >= 1
    # the wrong token, and the partial frames (timed out, or still open at the final report;
    # the nodes' own connections may be open or already closed by then, so not counted)
    assert d["rejected_unauthenticated"] >= 1
    assert d["rejected_unauthenticated"] + d["open_connections"] >= 1 + DAEMON_PARTIAL
    assert d["connections"] >= 5 + DAEMON_PARTIAL + 2  # the attacks and both nodes
    assert d["authenticated"] == 2  # alice and bob, nobody else
    r = counters["relay-alice-bob"]
    assert r["foreign_datagrams"] == 100
    assert r["connections"] >= FLOOD + 7
    assert r["dropped"] == 0
