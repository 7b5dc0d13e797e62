"""Node transport over real loopback sockets: authenticated hellos, and strangers that fail.

Alice dials Bob straight at Bob's listener for Alice (no relay) unless a test puts a relay in
between. Every rejection must end only its own connection and be counted.
"""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from emulator.child_config import Direction, Endpoint, RelayConfig
from emulator.relay import serve as serve_relay
from emulator.wire import HEADER, frame
from nodes.channel_hello import ChannelHello, make_hello
from nodes.transport import ChannelFramingError, Transport, hello_timeout

HOST = "127.0.0.1"
RUN = "run-1"
KEY = os.urandom(32)
OTHER_KEY = os.urandom(32)


def pair(**bob_options) -> tuple[Transport, Transport]:
    alice = Transport("alice", run_id=RUN, link_keys={"bob": KEY.hex()})
    bob = Transport("bob", run_id=RUN, link_keys={"alice": KEY.hex()}, **bob_options)
    return alice, bob


@contextlib.asynccontextmanager
async def serving(**bob_options):
    """Alice and Bob bound and serving; Alice's directory points at Bob's port for her."""
    alice, bob = pair(**bob_options)
    await alice.bind()
    ready = await bob.bind()
    alice.peers = {"bob": Endpoint(tcp=ready["tcp"]["alice"], udp=ready["udp"])}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(alice.serve)
        nursery.start_soon(bob.serve)
        with trio.fail_after(15):
            yield alice, bob
        nursery.cancel_scope.cancel()


async def raw(bob_port: int, data: bytes, *, reset: bool = False) -> bytes:
    """Send ``data`` on a fresh connection; return what came back until Bob closed it."""
    stream = await trio.open_tcp_stream(HOST, bob_port)
    if reset:
        stream.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0))
    got = b""
    with contextlib.suppress(trio.BrokenResourceError):  # Bob may reset before reading all
        await stream.send_all(data)
        if reset:
            await trio.aclose_forcefully(stream)
            return b""
        await stream.send_eof()  # as if the peer closed: a partial frame is then truncated
    with contextlib.suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some(4096):
            got += chunk
    await stream.aclose()
    return got


async def settled() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def round_trip(alice: Transport, bob: Transport, name: str) -> None:
    dialled = await alice.connect("bob", name)
    accepted = await bob.accept("alice", name)
    await dialled.send(b"ping")
    assert await accepted.receive() == b"ping"
    await accepted.send(b"pong")
    assert await dialled.receive() == b"pong"


def port_of(alice: Transport) -> int:
    return alice.peers["bob"].tcp


async def test_authenticated_hello_opens_the_channel_both_ways():
    async with serving() as (alice, bob):
        await round_trip(alice, bob, "qkd/x")
        await round_trip(alice, bob, "app/y")
        assert bob.counters() == {"connections": 2, "channels_accepted": 2}


async def test_bad_mac_wrong_names_and_wrong_run_are_spoofed():
    async with serving() as (alice, bob):
        port = port_of(alice)
        forged = [
            make_hello(OTHER_KEY, RUN, "alice", "bob", "qkd/x"),  # wrong key
            make_hello(KEY, "other-run", "alice", "bob", "qkd/x"),  # MAC over another run
            make_hello(KEY, RUN, "carol", "bob", "qkd/x"),  # not the peer of this listener
            make_hello(KEY, RUN, "alice", "dave", "qkd/x"),  # not for us
        ]
        for hello in forged:
            assert await raw(port, frame(hello) + frame(b"evil")) == b""
        await settled()
        assert bob.counters()["spoofed_hellos"] == 4
        kind, message = bob.first_faults.receive_nowait()  # queued once, for a node event
        assert kind == "spoofed_hellos" and "authentication" in message
        with pytest.raises(trio.WouldBlock):
            bob.first_faults.receive_nowait()
        await round_trip(alice, bob, "qkd/x")  # the real channel still opens


async def test_replayed_hello_is_rejected_and_never_replaces():
    async with serving() as (alice, bob):
        port = port_of(alice)
        hello = frame(make_hello(KEY, RUN, "alice", "bob", "qkd/x"))
        first = await trio.open_tcp_stream(HOST, port)
        await first.send_all(hello + frame(b"from the first"))
        accepted = await bob.accept("alice", "qkd/x")
        assert await raw(port, hello + frame(b"replayed")) == b""
        await settled()
        assert bob.counters()["replayed_hellos"] == 1
        assert await accepted.receive() == b"from the first"
        await first.aclose()


async def test_duplicate_channel_never_replaces_pending_or_open():
    async with serving() as (alice, bob):
        port = port_of(alice)
        pending = await alice.connect("bob", "qkd/x")
        await pending.send(b"original")
        # a fresh, correctly authenticated hello for the same channel while it is pending
        assert await raw(port, frame(make_hello(KEY, RUN, "alice", "bob", "qkd/x"))) == b""
        await settled()
        accepted = await bob.accept("alice", "qkd/x")
        assert await accepted.receive() == b"original"
        assert await raw(port, frame(make_hello(KEY, RUN, "alice", "bob", "qkd/x"))) == b""
        await settled()
        assert bob.counters()["duplicate_channels"] == 2
        await pending.send(b"still here")
        assert await accepted.receive() == b"still here"
        # once the open channel ended, its name may be opened again
        await pending.aclose()
        with pytest.raises(ConnectionError):
            await accepted.receive()
        await round_trip(alice, bob, "qkd/x")


async def test_big_first_frame_right_behind_the_hello_is_kept():
    """Only the hello is held to the small unauthenticated limit."""
    async with serving() as (alice, bob):
        stream = await trio.open_tcp_stream(HOST, port_of(alice))
        big = os.urandom(3 * 1024 * 1024)
        hello = frame(make_hello(KEY, RUN, "alice", "bob", "x"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, hello + frame(big) + frame(b"next"))
            accepted = await bob.accept("alice", "x")
            assert await accepted.receive() == big
            assert await accepted.receive() == b"next"
        await stream.aclose()


def nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"  # fixarray of one element, depth times, then nil


@pytest.mark.parametrize("attack, counter", [
    (HEADER.pack(0xFFFFFFFF), "bad_hellos"),  # announces 4 GiB
    (HEADER.pack(2048) + b"x" * 2048, "bad_hellos"),  # above the hello limit
    (os.urandom(3000), None),  # random bytes: a bad header, a bad hello or a truncated frame
    (frame(b"\xc1"), "bad_hellos"),  # invalid msgpack
    (frame(nested(1000)), "bad_hellos"),
    (frame(msgspec.msgpack.encode({"type": "channel_hello", "node": ["x"] * 10})), "bad_hellos"),
    (frame(b"x" * 10)[:8], "connection_errors"),  # closed mid-frame
])
async def test_garbage_ends_only_its_connection(attack, counter):
    async with serving() as (alice, bob):
        port = port_of(alice)
        dialled = await alice.connect("bob", "before")
        accepted = await bob.accept("alice", "before")
        assert await raw(port, attack) == b""
        await settled()
        rejected = {k: v for k, v in bob.counters().items()
                    if k not in ("connections", "channels_accepted", "closed_before_hello")}
        assert sum(rejected.values()) == 1, bob.counters()
        if counter is not None:
            assert rejected == {counter: 1}
        await dialled.send(b"after")  # the established channel is untouched
        assert await accepted.receive() == b"after"
        await round_trip(alice, bob, "later")


async def test_reset_during_hello_ends_only_that_connection():
    async with serving() as (alice, bob):
        port = port_of(alice)
        for _ in range(20):
            await raw(port, b"\x00\x00", reset=True)
        await settled()
        await round_trip(alice, bob, "x")
        assert bob.counters()["connections"] == 21


async def test_silent_connection_times_out_and_unauthenticated_are_capped():
    async with serving(hello_timeout_s={"alice": 0.3}, max_unauthenticated=2) as (alice, bob):
        port = port_of(alice)
        silent = [await trio.open_tcp_stream(HOST, port) for _ in range(2)]
        over = await trio.open_tcp_stream(HOST, port)
        assert await over.receive_some(10) == b""  # closed at once: two already wait
        start = trio.current_time()
        for stream in silent:
            assert await stream.receive_some(10) == b""
        waited = trio.current_time() - start
        assert 0.2 < waited < 2.0
        await settled()
        c = bob.counters()
        assert (c["hello_timeouts"], c["rejected_connections"]) == (2, 1)
        await round_trip(alice, bob, "x")  # the slots were freed


async def test_oversize_frame_on_open_channel_raises_remote_protocol_error():
    async with serving() as (alice, bob):
        stream = await trio.open_tcp_stream(HOST, port_of(alice))
        await stream.send_all(frame(make_hello(KEY, RUN, "alice", "bob", "x")))
        accepted = await bob.accept("alice", "x")
        await stream.send_all(HEADER.pack(0xFFFFFFFF))
        with pytest.raises(ChannelFramingError):
            await accepted.receive()
        assert bob.counters()["bad_frames"] == 1
        await stream.aclose()


async def test_oversize_frame_to_the_dialler_is_counted_there():
    async with serving() as (alice, bob):
        dialled = await alice.connect("bob", "x")
        accepted = await bob.accept("alice", "x")
        await accepted.framed.stream.send_all(HEADER.pack(0xFFFFFFFF))
        with pytest.raises(ChannelFramingError):
            await dialled.receive()
        assert alice.counters() == {"bad_frames": 1}


async def test_pending_channels_per_peer_are_capped():
    async with serving(max_pending=3) as (alice, bob):
        held = [await alice.connect("bob", f"c{i}") for i in range(4)]
        with trio.fail_after(5):
            while bob.counters().get("rejected_channels", 0) < 1:
                await trio.sleep(0.01)
        assert bob.counters()["channels_accepted"] == 3
        with pytest.raises(ConnectionError):
            await held[3].receive()


def test_hello_timeout_scales_with_the_link_delay():
    assert hello_timeout(0.0001, 1.0) == 10.0
    assert hello_timeout(0.010, 0.001) == pytest.approx(4 * 10.0)
    assert hello_timeout(0.010, 0.01, base_s=0.1) == pytest.approx(4.0)


@pytest.mark.parametrize("scaled", [True, False])
async def test_small_time_scale_hello_through_a_relay(scaled):
    """At time_scale 0.01 a 10 ms link takes 1 s of wall time: a hello timeout that does
    not scale (0.3 s here) drops the real channel; the scaled one keeps it."""
    delay, time_scale, base = 0.010, 0.01, 0.3
    timeout = hello_timeout(delay, time_scale, base_s=base) if scaled else base
    alice, bob = pair(hello_timeout_s={"alice": timeout})
    a_ready, b_ready = await alice.bind(), await bob.bind()
    config = RelayConfig(
        run_id=RUN, t0=0.0, time_scale=time_scale, seed=1, name="alice-bob", a="alice", b="bob",
        a_to_b=Direction(delay_s=delay), b_to_a=Direction(delay_s=delay),
        targets={"a": Endpoint(tcp=a_ready["tcp"]["bob"], udp=a_ready["udp"]),
                 "b": Endpoint(tcp=b_ready["tcp"]["alice"], udp=b_ready["udp"])})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bob.serve)
        relay = await nursery.start(serve_relay, config)
        alice.peers = {"bob": Endpoint(**relay.listen["a"])}
        with trio.fail_after(10):
            dialled = await alice.connect("bob", "x")
            if scaled:
                accepted = await bob.accept("alice", "x")
                await dialled.send(b"slow")
                assert await accepted.receive() == b"slow"
                assert "hello_timeouts" not in bob.counters()
            else:
                with pytest.raises(ConnectionError):
                    await dialled.receive()
                assert bob.counters()["hello_timeouts"] == 1
        nursery.cancel_scope.cancel()


async def test_dialling_a_peer_without_a_key_is_refused():
    alice = Transport("alice", run_id=RUN)
    with pytest.raises(LookupError):
        await alice.connect("bob", "x")


def test_hello_struct_is_strict():
    hello = msgspec.msgpack.decode(make_hello(KEY, RUN, "alice", "bob", "x"), type=ChannelHello)
    assert len(hello.nonce) == 16 and len(hello.mac) == 32
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"type": "channel_hello", "node": "a", "to": "b", "channel": "x",
                         "nonce": b"short", "mac": b"\x00" * 32}, ChannelHello)


# -- resources under a flood, in a subprocess ------------------------------------------------
TARGET = """
import json, sys, trio
from nodes.errors import RemoteProtocolError
from nodes.transport import Transport

async def main():
    transport = Transport("bob", run_id="flood", link_keys={"alice": sys.argv[1]})
    ready = await transport.bind()

    async def drain(name):
        channel = await transport.accept("alice", name)
        try:
            while True:
                await channel.receive()
        except (ConnectionError, RemoteProtocolError):
            await channel.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(transport.serve)
        for i in range(int(sys.argv[2])):
            nursery.start_soon(drain, f"c{i}")
        print(json.dumps(ready), flush=True)
        while await trio.to_thread.run_sync(sys.stdin.readline):
            print(json.dumps(transport.counters()), flush=True)
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (kB) and the number of open fds of ``pid``."""
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return fields


async def test_flood_of_connections_and_partial_frames_keeps_rss_and_fds_bounded():
    """20,000 hostile short connections and 40 partial max-size frames: RSS stays within
    50 MB of the idle process, and every fd is released once the attackers are gone."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from nodes.transport import MAX_FRAME

    connections, dialers, partial = 20_000, 64, 40
    process = subprocess.Popen(
        [sys.executable, "-c", TARGET, KEY.hex(), str(partial)], cwd=Path(__file__).parents[1],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask() -> dict:
        process.stdin.write("counters\n")
        process.stdin.flush()
        return json.loads(process.stdout.readline())

    try:
        ready = json.loads(await trio.to_thread.run_sync(process.stdout.readline))
        port = ready["tcp"]["alice"]
        attacks = [HEADER.pack(0xFFFFFFFF), os.urandom(300), frame(nested(500)), b"",
                   frame(make_hello(OTHER_KEY, "flood", "alice", "bob", "x"))]

        async def dial(worker: int, count: int) -> None:
            for i in range(count):
                with contextlib.suppress(OSError, trio.BrokenResourceError):
                    stream = await trio.open_tcp_stream(HOST, port)
                    data = attacks[(worker + i) % len(attacks)]
                    if data:
                        await stream.send_all(data)
                    if i % 3 == 0:  # some reset, the rest close
                        stream.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
                    await trio.aclose_forcefully(stream)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:  # warm-up: allocator, code paths
                for w in range(8):
                    nursery.start_soon(dial, w, 50)
            await trio.sleep(0.5)
            before = proc_status(process.pid)
            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for w in range(dialers):
                    nursery.start_soon(dial, w, connections // dialers)
            flood_s = trio.current_time() - start
            held = []
            for i in range(partial):  # authenticated channels, each with a partial frame
                stream = await trio.open_tcp_stream(HOST, port)
                await stream.send_all(frame(make_hello(KEY, "flood", "alice", "bob", f"c{i}")))
                await stream.send_all(HEADER.pack(MAX_FRAME) + bytes(256 * 1024))
                held.append(stream)
            unauthenticated = []
            for _ in range(partial):  # and unauthenticated ones announcing a max-size frame
                stream = await trio.open_tcp_stream(HOST, port)
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(HEADER.pack(MAX_FRAME) + bytes(60_000))
                unauthenticated.append(stream)
            await trio.sleep(1.0)
            during = proc_status(process.pid)
            for stream in held + unauthenticated:
                await trio.aclose_forcefully(stream)
            for _ in range(100):
                after = proc_status(process.pid)
                if after["fds"] <= before["fds"]:
                    break
                await trio.sleep(0.05)
            counters = await trio.to_thread.run_sync(ask)
    finally:
        process.kill()
        process.communicate()
    with pytest.raises(ProcessLookupError):  # reaped: nothing left behind
        os.kill(process.pid, 0)
    print(f"flood: {connections} connections in {flood_s:.1f} s; rss {before['VmRSS']} -> "
          f"{during['VmRSS']} kB (peak {after['VmHWM']}); fds {before['fds']} -> "
          f"{during['fds']} -> {after['fds']}; {counters}")
    assert max(during["VmRSS"], after["VmHWM"]) - before["VmRSS"] < 50 * 1024
    assert after["fds"] == before["fds"]
    assert counters["connections"] >= connections + 2 * partial
    assert counters["channels_accepted"] == partial
    assert counters["channel_errors"] == partial  # the truncated partial frames
    rejected = sum(counters.get(k, 0) for k in (
        "bad_hellos", "spoofed_hellos", "rejected_connections", "connection_errors",
        "closed_before_hello"))
    assert rejected >= connections


def test_for_node_scales_hello_timeouts_with_each_link():
    from emulator.child_config import DaemonAddress, MqttAddress, NodeConfig, node_view
    from emulator.scenario import load_scenario

    overrides = ["scenario.time_scale=0.001", "links.0.classical.delay_ms=12",
                 "links.0.classical.jitter_ms=3", "links.0.classical.rate_mbps=0.01"]
    sc = load_scenario(Path(__file__).parents[1] / "scenarios" / "quickstart.toml", overrides)
    config = NodeConfig(run_id=RUN, t0=0.0, time_scale=0.001, seed=1, name="bob", token="t",
                        daemon=DaemonAddress(HOST, 1), mqtt=MqttAddress(HOST, 1),
                        view=node_view(sc, "bob"), link_keys={"alice": KEY.hex()})
    transport = Transport.for_node(config, config.view)
    delay = 0.012 + 0.003 + 8 * 1024 / 0.01e6  # propagation, jitter, the hello at 10 kbit/s
    assert transport._timeouts == {"alice": pytest.approx(4 * delay / 0.001)}
    assert transport.run_id == RUN and set(transport._gates) == {"alice"}
