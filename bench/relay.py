"""Relay overhead: what a zero-delay, unshaped link relay adds to a loopback round trip.

A client and an echo server (one trio process) exchange 64-byte messages, first directly, then
through ``python -m emulator.relay`` running as its own process (as in a run). Reported: median
and 90th-percentile round trips over ``ROUNDS`` exchanges for TCP and UDP, the relay's added
median in microseconds, and bulk TCP throughput direct vs relayed.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from emulator.child_config import Direction, Endpoint, RelayConfig, write_config

ROUNDS = 2000
WARMUP = 100
MESSAGE = b"x" * 64
BULK_BYTES = 32 * 1024 * 1024
HOST = "127.0.0.1"
RESULTS = Path(__file__).parent / "results" / "relay.json"


async def _recv_exact(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


async def _tcp_rtts(port: int) -> list[float]:
    stream = await trio.open_tcp_stream(HOST, port)
    rtts = []
    async with stream:
        for i in range(WARMUP + ROUNDS):
            t = time.perf_counter()
            await stream.send_all(MESSAGE)
            await _recv_exact(stream, len(MESSAGE))
            if i >= WARMUP:
                rtts.append(time.perf_counter() - t)
    return rtts


async def _udp_rtts(sock: trio.socket.SocketType, port: int) -> list[float]:
    rtts = []
    for i in range(WARMUP + ROUNDS):
        t = time.perf_counter()
        await sock.sendto(MESSAGE, (HOST, port))
        await sock.recv(2048)
        if i >= WARMUP:
            rtts.append(time.perf_counter() - t)
    return rtts


async def _bulk_mbps(port: int, sink: trio.SocketListener) -> float:
    """Push BULK_BYTES one way and time until the sink has them all."""
    stream = await trio.open_tcp_stream(HOST, port)
    peer = await sink.accept()
    async with stream, peer, trio.open_nursery() as nursery:
        t = time.perf_counter()
        nursery.start_soon(stream.send_all, bytes(BULK_BYTES))
        got = 0
        while got < BULK_BYTES:
            got += len(await peer.receive_some(1 << 20))
        return 8 * BULK_BYTES / (time.perf_counter() - t) / 1e6


def _summary(rtts: list[float]) -> dict:
    q = statistics.quantiles(rtts, n=10)
    return {"median_us": statistics.median(rtts) * 1e6, "p90_us": q[-1] * 1e6}


async def _run(workdir: Path) -> dict:
    (echo_listener,) = await trio.open_tcp_listeners(0, host=HOST)
    (sink_listener,) = await trio.open_tcp_listeners(0, host=HOST)
    echo_udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    client_udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await echo_udp.bind((HOST, 0))
    await client_udp.bind((HOST, 0))

    async def echo_tcp(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)

    async def echo_datagrams() -> None:
        while True:
            data, source = await echo_udp.recvfrom(2048)
            await echo_udp.sendto(data, source)

    echo_port, echo_udp_port = echo_listener.socket.getsockname()[1], echo_udp.getsockname()[1]
    a = Endpoint(tcp=sink_listener.socket.getsockname()[1], udp=client_udp.getsockname()[1])
    b = Endpoint(tcp=echo_port, udp=echo_udp_port)
    config = RelayConfig(
        run_id="bench", t0=time.monotonic(), time_scale=1.0, seed=1, name="bench",
        a="client", b="echo", a_to_b=Direction(), b_to_a=Direction(), targets={"a": a, "b": b},
    )  # fmt: skip
    write_config(workdir / "relay.json", config)
    ready = workdir / "ready.json"
    command = [sys.executable, "-m", "emulator.relay", "--config", str(workdir / "relay.json"),
               "--ready-file", str(ready)]  # fmt: skip
    result: dict = {"rounds": ROUNDS, "message_bytes": len(MESSAGE)}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, echo_tcp, [echo_listener])
        nursery.start_soon(echo_datagrams)
        proc = await trio.lowlevel.open_process(
            command, cwd=Path(__file__).parents[1], stderr=subprocess.DEVNULL
        )
        try:
            with trio.fail_after(120):
                while not ready.exists():
                    if proc.poll() is not None:
                        raise RuntimeError(f"relay exited with {proc.returncode}")
                    await trio.sleep(0.02)
                listen = json.loads(ready.read_text())["listen"]
                for proto, direct, relayed in (
                    ("tcp", _tcp_rtts(echo_port), _tcp_rtts(listen["a"]["tcp"])),
                    ("udp", _udp_rtts(client_udp, echo_udp_port),
                            _udp_rtts(client_udp, listen["a"]["udp"])),
                ):  # fmt: skip
                    d, r = _summary(await direct), _summary(await relayed)
                    result[proto] = {
                        "direct": d,
                        "relayed": r,
                        "overhead_median_us": r["median_us"] - d["median_us"],
                    }
                # bulk: the sink listener is a's endpoint, so push b -> a through the relay
                result["bulk_tcp_mbps"] = {
                    "direct": await _bulk_mbps(a.tcp, sink_listener),
                    "relayed": await _bulk_mbps(listen["b"]["tcp"], sink_listener),
                }
        finally:
            proc.terminate()
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        nursery.cancel_scope.cancel()
    return result


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = trio.run(_run, Path(tmp))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
