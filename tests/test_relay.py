"""Link relay: shaping model against its formulas, and the relay over real loopback sockets.

Tolerances: statistical checks use 4-sigma bounds of the sample size; timing checks use the
brief's budgets (median one-way delay within +2 ms, rate within 10 %).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from emulator.child_config import Direction, Endpoint, RelayConfig, write_config
from emulator.relay import Relay, serve
from emulator.relay_core import (
    MAX_TIMER_LEAD_S,
    DatagramQueue,
    DirectionShaper,
    StreamOrder,
    TimerLead,
    link_rng,
)
from emulator.wire import FramedStream
from tests.mqtt_helpers import next_payload

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
STAMP = struct.Struct(">dI")  # send time (trio clock), sequence number


def shaper(direction: Direction, time_scale: float = 1.0, seed: int = 7) -> DirectionShaper:
    return DirectionShaper(
        direction,
        time_scale,
        jitter_rng=link_rng(seed, "l", "ab", "jitter"),
        loss_rng=link_rng(seed, "l", "ab", "loss"),
    )


# -- core: formulas --------------------------------------------------------------------------
def test_fifo_serialization_follows_departure_formula():
    s = shaper(Direction(delay_s=0.5, rate_bps=8000.0))  # 1000 bytes take 1 s
    assert s.transmit(0.0, 1000) == pytest.approx(1.0 + 0.5)  # link free at 1
    assert s.transmit(0.5, 1000) == pytest.approx(2.0 + 0.5)  # waits for the link: departs 1
    assert s.transmit(5.0, 10) == pytest.approx(5.01 + 0.5)  # idle link: departs on arrival


def test_time_scale_stretches_delay_and_serialization():
    s = shaper(Direction(delay_s=0.01, rate_bps=8000.0), time_scale=0.5)
    assert s.delay == pytest.approx(0.02)
    assert s.serialization(1000) == pytest.approx(2.0)


def test_jitter_is_uniform_around_delay():
    n, delay, jitter = 20000, 0.010, 0.004
    s = shaper(Direction(delay_s=delay, jitter_s=jitter))
    d = np.array([s.transmit(0.0, 1) for _ in range(n)])
    # U(-j, j): mean 0, variance j^2/3; 4-sigma bounds on the sample mean and variance
    # (variance of the sample variance of a uniform: (mu4 - sigma^4)/n, mu4 = j^4/5).
    sigma2 = jitter**2 / 3
    assert d.min() >= delay - jitter and d.max() <= delay + jitter
    assert abs(d.mean() - delay) < 4 * math.sqrt(sigma2 / n)
    assert abs(d.var() - sigma2) < 4 * math.sqrt((jitter**4 / 5 - sigma2**2) / n)


def test_loss_is_binomial_and_reproducible():
    n, p = 100_000, 0.05
    s1, s2 = shaper(Direction(loss=p), seed=3), shaper(Direction(loss=p), seed=3)
    draws = np.array([s1.lost() for _ in range(n)])
    assert abs(draws.sum() - n * p) < 4 * math.sqrt(n * p * (1 - p))
    assert all(draws[:1000] == [s2.lost() for _ in range(1000)])
    other = shaper(Direction(loss=p), seed=4)
    assert any(draws[:1000] != [other.lost() for _ in range(1000)])


@given(st.lists(st.floats(min_value=0, max_value=1e3, allow_nan=False), max_size=50))
def test_stream_order_is_monotone_and_never_early(deliveries):
    order = StreamOrder()
    released = [order.release(d) for d in deliveries]
    assert released == sorted(released)
    assert all(r >= d for r, d in zip(released, deliveries, strict=True))


def test_datagram_queue_pops_earliest_first_and_flags_new_head():
    q = DatagramQueue()
    assert q.push(2.0, b"late")
    assert q.push(1.0, b"early")
    assert not q.push(1.5, b"middle")
    assert q.next_deadline() == 1.0
    assert q.pop_due(1.6) == [b"early", b"middle"]
    assert q.pending_bytes == 4 and len(q) == 1


def test_timer_lead_tracks_oversleep_quantile():
    rng = np.random.default_rng(5)
    timer = TimerLead()
    oversleep = rng.uniform(0, 0.001, 5000)  # epoll's millisecond rounding: U(0, 1 ms)
    lateness = []
    for o in oversleep:  # woke = (deadline - lead) + oversleep
        lateness.append(o - timer.lead)
        timer.observe(lateness[-1])
    # Quantile 0.3 of U(0, 1 ms) is 0.3 ms; the estimate wanders by about one step.
    assert abs(timer.lead - 0.0003) < 5 * timer.step
    assert np.median(lateness[1000:]) >= 0
    timer.lead = MAX_TIMER_LEAD_S
    timer.observe(1.0)
    assert timer.lead == MAX_TIMER_LEAD_S


def test_timer_lead_starts_at_calibration_quantile_clamped():
    timer = TimerLead()
    late = [0.0009, 0.0001, 0.0005, 0.0003, 0.0007, 0.0002, 0.0004, 0.0008, 0.0006, 0.0010, 0.0]
    timer.start_from(late)  # sorted 0 .. 1 ms in 0.1 ms steps: index int(0.3 * 10) = 3
    assert timer.lead == 0.0003
    timer.start_from([0.5] * 4)
    assert timer.lead == MAX_TIMER_LEAD_S
    timer.start_from([-0.001] * 4)
    assert timer.lead == 0.0


# -- relay over loopback ---------------------------------------------------------------------
class Node:
    """A node's listening endpoint: TCP listener and UDP socket on kernel-chosen ports."""

    def __init__(self, listener: trio.SocketListener, udp: trio.socket.SocketType) -> None:
        self.listener, self.udp = listener, udp
        self.endpoint = Endpoint(tcp=listener.socket.getsockname()[1], udp=udp.getsockname()[1])


async def open_node() -> Node:
    (listener,) = await trio.open_tcp_listeners(0, host=HOST)
    udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await udp.bind((HOST, 0))
    return Node(listener, udp)


def relay_config(a: Node, b: Node, ab: Direction, ba: Direction | None = None, **kw) -> RelayConfig:
    return RelayConfig(
        run_id=kw.pop("run_id", "t"), t0=0.0, time_scale=kw.pop("time_scale", 1.0), seed=kw.pop("seed", 1),
        name="a-b", a="alice", b="bob", a_to_b=ab, b_to_a=ba or ab,
        targets={"a": a.endpoint, "b": b.endpoint}, **kw,
    )  # fmt: skip


async def pingpong_one_way_delays(ab: Direction, rounds: int, time_scale: float = 1.0):
    """Ping-pong framed timestamps a->b->a through a relay; return every one-way delay."""
    a, b = await open_node(), await open_node()
    delays: list[float] = []

    async def echo(stream: trio.SocketStream) -> None:
        framed = FramedStream(stream)
        while (msg := await framed.receive()) is not None:
            sent, seq = STAMP.unpack(msg)
            delays.append(trio.current_time() - sent)
            await framed.send(STAMP.pack(trio.current_time(), seq))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, echo, [b.listener])
        relay = await nursery.start(serve, relay_config(a, b, ab, time_scale=time_scale))
        stream = await trio.open_tcp_stream(HOST, relay.listen["a"]["tcp"])
        framed = FramedStream(stream)
        with trio.fail_after(10 + rounds * 4 * ab.delay_s / time_scale):
            for seq in range(rounds):
                await framed.send(STAMP.pack(trio.current_time(), seq))
                sent, back = STAMP.unpack(await framed.receive())
                assert back == seq
                delays.append(trio.current_time() - sent)
        await stream.aclose()
        await settled()
        counters = relay.counters
        assert counters.messages == 2 * rounds
        assert counters.bytes_ab == counters.bytes_ba == rounds * (4 + STAMP.size)
        nursery.cancel_scope.cancel()
    return delays


async def test_tcp_delay_median_within_2ms():
    delays = await pingpong_one_way_delays(Direction(delay_s=0.010), rounds=100)
    assert len(delays) == 200
    assert 0.010 <= statistics.median(delays) <= 0.012


async def test_time_scale_half_doubles_wall_delay():
    delays = await pingpong_one_way_delays(Direction(delay_s=0.010), rounds=50, time_scale=0.5)
    assert 0.020 <= statistics.median(delays) <= 0.022


async def test_tcp_jitter_keeps_byte_order():
    ab = Direction(delay_s=0.005, jitter_s=0.004)
    a, b = await open_node(), await open_node()
    n, received = 300, []
    async with trio.open_nursery() as nursery:
        relay = await nursery.start(serve, relay_config(a, b, ab))
        stream = await trio.open_tcp_stream(HOST, relay.listen["a"]["tcp"])
        peer = FramedStream(await b.listener.accept())
        with trio.fail_after(10):
            for seq in range(n):  # one frame per ms: jitter (+-4 ms) would reorder them
                await stream.send_all(STAMP.pack(trio.current_time(), seq))
                await trio.sleep(0.001)
            data = b""
            while len(data) < n * STAMP.size:
                data += await peer.stream.receive_some(65536)
        for seq in range(n):
            received.append(STAMP.unpack_from(data, seq * STAMP.size)[1])
        assert received == list(range(n))
        nursery.cancel_scope.cancel()


async def test_rate_limit_holds_within_10_percent():
    rate, size = 8e6, 2 * 1024 * 1024
    a, b = await open_node(), await open_node()
    async with trio.open_nursery() as nursery:
        relay = await nursery.start(serve, relay_config(a, b, Direction(rate_bps=rate)))
        stream = await trio.open_tcp_stream(HOST, relay.listen["a"]["tcp"])
        peer = await b.listener.accept()
        start = trio.current_time()
        nursery.start_soon(stream.send_all, bytes(size))
        got = 0
        with trio.fail_after(10):
            while got < size:
                got += len(await peer.receive_some(65536))
        measured = 8 * size / (trio.current_time() - start)
        assert abs(measured - rate) <= 0.10 * rate, measured
        await settled()
        assert relay.counters.bytes_ab == size
        nursery.cancel_scope.cancel()


async def settled() -> None:
    """Let the relay finish its bookkeeping: a receiver can run before the relay task that
    sent the bytes has counted them."""
    await trio.testing.wait_all_tasks_blocked()


async def recv_all(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(65536)
        assert chunk, "peer closed early"
        data += chunk
    return data


async def test_cut_stops_both_protocols_and_restore_resumes_tcp_in_order():
    a, b = await open_node(), await open_node()
    async with trio.open_nursery() as nursery:
        relay: Relay = await nursery.start(serve, relay_config(a, b, Direction(delay_s=0.05)))
        stream = await trio.open_tcp_stream(HOST, relay.listen["a"]["tcp"])
        peer = await b.listener.accept()
        with trio.fail_after(10):
            await stream.send_all(b"x" * 1000)
            assert await recv_all(peer, 1000) == b"x" * 1000
            payload = bytes(range(256)) * 40  # 10240 bytes with a visible order
            await stream.send_all(payload[:5000])
            relay.cut()  # the first 5000 bytes are still in flight (50 ms delay)
            await stream.send_all(payload[5000:])
            await peer.send_all(b"reply during cut")
            for _ in range(10):
                await a.udp.sendto(b"datagram", (HOST, relay.listen["a"]["udp"]))
            arrived = []

            async def probe(receive, size: int) -> None:
                arrived.append(await receive(size))

            with trio.move_on_after(0.3):  # six delays: nothing may arrive anywhere
                async with trio.open_nursery() as probes:
                    for receive in (peer.receive_some, stream.receive_some, b.udp.recv):
                        probes.start_soon(probe, receive, 100)
            assert arrived == []
            assert relay.counters.dropped == 10
            assert relay.counters.bytes_ab == 1000
            relay.restore()
            assert await recv_all(peer, len(payload)) == payload
            assert await recv_all(stream, 16) == b"reply during cut"
        await settled()
        c = relay.counters
        assert (c.bytes_ab, c.bytes_ba, c.dropped) == (1000 + len(payload), 16, 10)
        nursery.cancel_scope.cancel()


async def send_paced(sock, address, relay: Relay, n: int, size: int = 64, window: int = 50):
    """Send n numbered datagrams, never more than ``window`` ahead of the relay's handling.

    Pacing keeps the kernel's receive buffers from dropping datagrams, so every loss seen is
    the relay's.
    """
    for start in range(0, n, window):
        for seq in range(start, min(n, start + window)):
            await sock.sendto(struct.pack(">I", seq).ljust(size, b"."), address)
        while relay.counters.messages + relay.counters.dropped < min(n, start + window):
            await trio.sleep(0.001)


async def udp_losses(p: float, n: int, seed: int) -> tuple[set[int], Relay]:
    a, b = await open_node(), await open_node()
    got: set[int] = set()

    async def receive() -> None:
        while True:
            got.add(struct.unpack_from(">I", await b.udp.recv(100))[0])

    async with trio.open_nursery() as nursery:
        relay = await nursery.start(serve, relay_config(a, b, Direction(loss=p), seed=seed))
        nursery.start_soon(receive)
        with trio.fail_after(20):
            await send_paced(a.udp, (HOST, relay.listen["a"]["udp"]), relay, n)
            while len(got) < relay.counters.messages:
                await trio.sleep(0.001)
        nursery.cancel_scope.cancel()
    return set(range(n)) - got, relay


async def test_udp_loss_is_binomial_and_counted():
    n, p = 2000, 0.05
    lost, relay = await udp_losses(p, n, seed=11)
    assert abs(len(lost) - n * p) <= 4 * math.sqrt(n * p * (1 - p))
    c = relay.counters
    assert (c.dropped, c.messages, c.bytes_ab, c.bytes_ba) == (len(lost), n - len(lost), (n - len(lost)) * 64, 0)  # fmt: skip
    again, _ = await udp_losses(p, 500, seed=11)
    assert again == {s for s in lost if s < 500}


async def test_udp_reply_to_source_reaches_sender_with_delay():
    a, b = await open_node(), await open_node()
    async with trio.open_nursery() as nursery:
        ab = Direction(delay_s=0.02, jitter_s=0.005)
        relay = await nursery.start(serve, relay_config(a, b, ab, Direction(delay_s=0.01)))
        with trio.fail_after(5):
            start = trio.current_time()
            await a.udp.sendto(b"ping", (HOST, relay.listen["a"]["udp"]))
            data, source = await b.udp.recvfrom(100)
            there = trio.current_time() - start
            assert data == b"ping" and source == (HOST, relay.listen["b"]["udp"])
            await b.udp.sendto(b"pong", source)
            data, source = await a.udp.recvfrom(100)
            back = trio.current_time() - start - there
            assert data == b"pong" and source == (HOST, relay.listen["a"]["udp"])
        assert 0.015 - MAX_TIMER_LEAD_S <= there and 0.01 - MAX_TIMER_LEAD_S <= back
        await settled()
        c = relay.counters
        assert (c.bytes_ab, c.bytes_ba, c.messages, c.dropped) == (4, 4, 2, 0)
        nursery.cancel_scope.cancel()


# -- strangers ------------------------------------------------------------------------------
async def test_foreign_datagrams_are_dropped_and_counted():
    a, b = await open_node(), await open_node()
    stranger = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await stranger.bind((HOST, 0))
    async with trio.open_nursery() as nursery:
        relay = await nursery.start(serve, relay_config(a, b, Direction()))
        with trio.fail_after(5):
            for _ in range(5):
                await stranger.sendto(b"forged", (HOST, relay.listen["a"]["udp"]))
                await stranger.sendto(b"forged", (HOST, relay.listen["b"]["udp"]))
            await a.udp.sendto(b"real", (HOST, relay.listen["a"]["udp"]))
            assert await b.udp.recv(100) == b"real"  # datagrams are handled in order
            await settled()
        c = relay.counters
        assert c.faults["foreign_datagrams"] == 10
        assert (c.messages, c.bytes_ab, c.bytes_ba, c.dropped) == (1, 4, 0, 0)
        nursery.cancel_scope.cancel()
    stranger.close()


async def test_connection_cap_silent_timeout_and_resets_end_only_their_connection(monkeypatch):
    import emulator.relay_tcp as relay_module

    monkeypatch.setattr(relay_module, "MAX_TCP_CONNECTIONS", 3)
    monkeypatch.setattr(relay_module, "FIRST_BYTE_TIMEOUT_S", 0.3)
    a, b = await open_node(), await open_node()
    async with trio.open_nursery() as nursery:
        relay = await nursery.start(serve, relay_config(a, b, Direction()))
        port = relay.listen["a"]["tcp"]
        with trio.fail_after(10):
            good = await trio.open_tcp_stream(HOST, port)
            await good.send_all(b"first")
            good_peer = await b.listener.accept()
            assert await recv_all(good_peer, 5) == b"first"
            silent = [await trio.open_tcp_stream(HOST, port) for _ in range(2)]
            held = [await b.listener.accept() for _ in range(2)]  # kept open (no GC close)
            over = await trio.open_tcp_stream(HOST, port)  # the fourth: closed at once
            assert await over.receive_some(10) == b""
            # a reset and garbage on their own connections; "good" must keep working
            for stream in silent:
                stream.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER,
                                  struct.pack("ii", 1, 0))
            await silent[0].send_all(os.urandom(3000))
            await trio.aclose_forcefully(silent[0])  # RST
            await trio.aclose_forcefully(silent[1])
            await trio.sleep(0.5)  # beyond the silent timeout: "good" already sent, stays up
            await good.send_all(b"second")
            assert await recv_all(good_peer, 6) == b"second"
            late = await trio.open_tcp_stream(HOST, port)  # slots were freed
            held.append(await b.listener.accept())
            assert await late.receive_some(10) == b""  # closed after 0.3 s of silence
        await settled()
        faults = relay.counters.faults
        assert faults["rejected_connections"] == 1 and faults["idle_timeouts"] == 1
        assert relay.counters.connections == 5
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def relay_process(config, tmp_path):
    """``python -m emulator.relay`` with ``config``, ready; yields (process, listen).

    On exit the process is killed if still running, reaped, and checked to be gone."""
    config_path, ready = tmp_path / "relay.json", tmp_path / "ready.json"
    write_config(config_path, config)
    command = [sys.executable, "-m", "emulator.relay", "--config", config_path, "--ready-file", ready]  # fmt: skip
    with (tmp_path / "log").open("wb") as log:
        proc = await trio.lowlevel.open_process(command, cwd=REPO, stderr=log)
    try:
        with trio.fail_after(15):
            while not ready.exists():
                assert proc.poll() is None, (tmp_path / "log").read_text()
                await trio.sleep(0.02)
        yield proc, json.loads(ready.read_text())["listen"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)


async def test_subprocess_ready_file_forwarding_and_sigterm(tmp_path):
    a, b = await open_node(), await open_node()
    config = relay_config(a, b, Direction(delay_s=0.001))
    async with relay_process(config, tmp_path) as (proc, listen):
        with trio.fail_after(15):
            assert set(listen) == {"a", "b"} and set(listen["a"]) == {"tcp", "udp"}
            stream = await trio.open_tcp_stream(HOST, listen["b"]["tcp"])  # b connects to a
            peer = await a.listener.accept()
            await stream.send_all(b"hello")
            assert await recv_all(peer, 5) == b"hello"
            await peer.send_all(b"hi")
            assert await recv_all(stream, 2) == b"hi"
            await stream.aclose()
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    assert "final" in (tmp_path / "log").read_text()


# -- MQTT control plane ----------------------------------------------------------------------
async def test_mqtt_cut_restore_metrics_and_stop(broker):
    from emulator.child_config import MqttAddress
    from emulator.mqtt import open_mqtt

    a, b = await open_node(), await open_node()
    mqtt_address = MqttAddress(broker.host, broker.port)
    config = relay_config(a, b, Direction(), mqtt=mqtt_address, run_id="r1")
    with trio.fail_after(20):  # also bounds serve's own return on stop
        async with open_mqtt(broker.host, broker.port, "test") as mqtt, trio.open_nursery() as n:
            await mqtt.subscribe("qnet/r1/relay/a-b/#", qos=1)
            relay = await n.start(serve, config)
            address = (HOST, relay.listen["a"]["udp"])
            await mqtt.publish("qnet/r1/control/link/a-b", '{"action": "cut"}', qos=1)
            while not relay.is_cut:
                await trio.sleep(0.005)
            await a.udp.sendto(b"lost", address)
            await mqtt.publish("qnet/r1/control/link/a-b", '{"action": "explode"}', qos=1)
            await mqtt.publish("qnet/r1/control/link/a-b", '{"action": "restore"}', qos=1)
            while relay.is_cut:
                await trio.sleep(0.005)
            await a.udp.sendto(b"kept", address)
            assert await b.udp.recv(100) == b"kept"
            await settled()
            metrics = await next_payload(mqtt, "qnet/r1/relay/a-b/metrics")
            assert metrics["dropped"] == 1 and metrics["name"] == "a-b"
            await mqtt.publish("qnet/r1/control/stop", b"{}", qos=1)
            result = await next_payload(mqtt, "qnet/r1/relay/a-b/result")
            expected = {"name": "a-b", "a": "alice", "b": "bob", "bytes_ab": 4, "bytes_ba": 0,
                        "messages": 1, "dropped": 1, "counters": {"connections": 0}}  # fmt: skip
            assert result == expected
    # serve returned by itself on stop (the nursery closed without being cancelled)


async def test_subprocess_sigterm_publishes_retained_result(broker, tmp_path):
    from emulator.child_config import MqttAddress
    from emulator.mqtt import open_mqtt

    a, b = await open_node(), await open_node()
    config = relay_config(a, b, Direction(), mqtt=MqttAddress(broker.host, broker.port))
    async with relay_process(config, tmp_path) as (proc, listen):
        with trio.fail_after(15):
            await b.udp.sendto(b"ba", (HOST, listen["b"]["udp"]))
            assert await a.udp.recv(100) == b"ba"
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        async with open_mqtt(broker.host, broker.port, "late-reader") as mqtt:
            await mqtt.subscribe("qnet/t/relay/a-b/result", qos=1)  # retained: still there
            result = await next_payload(mqtt, "qnet/t/relay/a-b/result")
        assert (result["bytes_ba"], result["messages"], result["dropped"]) == (2, 1, 0)
