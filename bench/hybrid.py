"""Hybrid packets through the real daemon (its own process, over TCP): per-hop decision latency and
packets per second through three routers.

Chain alice - r1 - r2 - r3 - bob of 0.1 km ``[links.flight]`` fibres (no loss, no drift),
routers with a 30 ms delay line (late switches are counted and reported). Each router runs
``HybridCore`` with its own daemon connection (all in this one process); headers pass between
the cores' codecs in memory (no UDP: the classical socket round trip is measured apart). As in
``nodes.net.hybrid_shell``, the switches decided in one pass (the arrivals of one push, one
header) go to the daemon in one write (``request_many``); alice sends a burst of what the
window allows at once (``QubitPrepareSend`` each, one write), bob discards likewise.
Reported:

* decision latency per hop (µs, median and p99): the payload's arrival in a router's delay
  line to the daemon setting its switch (``Switched.t - PayloadArrived.t``, emulated = wall at
  time_scale 1), i.e. push + core decision + ``PayloadSwitch`` round trip;
* beside it, a bare daemon round trip (``StatsRequest``) and a UDP loopback round trip;
* packets per second delivered to bob and the CPU each packet cost the daemon and the
  (single-process) sender, routers and bob, at windows (packets in flight end to end) sized
  from the pipeline: each hop holds a payload for its whole budget, so a packet takes
  ``LATENCY_S`` end to end and the target rate needs ``target x LATENCY_S`` in flight
  (``window_for``), plus the few ms a window slot spends in alice's send and bob's discard
  (``WINDOW_FACTORS``: 1.25, 1.1 and 1 of it, half beside, since a window beyond what the CPU
  sustains only queues and turns into late packets). The headline is the best run without any
  late packet.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trio

from emulator.batches import batches
from emulator.child_config import DaemonConfig, write_config
from emulator.daemon import protocol as p
from emulator.hybrid_config import FlightFibre, LinkFlight, NodeHybrid
from emulator.physics.channels import fibre_delay
from emulator.scenario import NodeMemory
from nodes.daemon_client import DaemonError, open_daemon
from nodes.net.forwarding import Forwarder, HeaderForwarder
from nodes.net.header import PAYLOAD_QUBIT, HeaderCodec, HybridHeader, PayloadDescriptor
from nodes.net.hybrid import Delivered, HybridCore, SendHeader, Switch
from nodes.net.spf import Route

RESULT = Path(__file__).resolve().parent / "results" / "hybrid.json"
CHAIN = ["alice", "r1", "r2", "r3", "bob"]
PACKETS = 3000
TARGET = 2000  # packets/s
KEY = bytes(range(32))
BUDGET_US = 30_000.0  # each hop holds a payload this long (a fixed spool): latency, not rate
FIBRE_KM = 0.1
SEND_BURST = 64  # alice's most packets in one write
# windows run, as multiples of ``window_for(TARGET)``: a window slot is held from alice's send
# request to bob's discard reply, a few ms more than the payload's LATENCY_S, hence the 1.25
WINDOW_FACTORS = (1.25, 1.1, 1.0, 0.5)
LATENCY_S = 3 * BUDGET_US * 1e-6 + 4 * float(fibre_delay(FIBRE_KM))  # alice to bob


def window_for(rate: float) -> int:
    """Packets in flight that keep ``rate`` through the fixed-latency pipeline (Little)."""
    return math.ceil(rate * LATENCY_S)


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


def config() -> DaemonConfig:
    fibre = LinkFlight(attenuation_db_per_km=0.0)
    links = [FlightFibre(f"{a}-{b}", a, b, FIBRE_KM, fibre) for a, b in zip(CHAIN, CHAIN[1:])]
    return DaemonConfig("bench", time.monotonic(), 1.0, 1, {n: n for n in CHAIN}, [],
                        memories={n: NodeMemory(slots=4096) for n in CHAIN},
                        flight_fibres=links,
                        hybrid={n: NodeHybrid(BUDGET_US, 0.0, False) for n in CHAIN[1:-1]})


def core_of(i: int) -> HybridCore:
    name = CHAIN[i]
    routes = {"bob": Route("bob", f"{name}-{CHAIN[i + 1]}", CHAIN[i + 1], 1.0,
                           tuple(CHAIN[i:]))} if name != "bob" else {}
    keys = {f"{a}-{b}": KEY for a, b in zip(CHAIN, CHAIN[1:]) if name in (a, b)}
    return HybridCore(HeaderForwarder(Forwarder(name, routes), keys), compensate=False)


async def run_chain(port: int, window_size: int, packets: int) -> dict:
    async with trio.open_nursery() as nursery:
        clients = {}
        for name in CHAIN:
            clients[name] = await nursery.start(_client, port, name)
        cores = {name: core_of(i) for i, name in enumerate(CHAIN)}
        latencies: list[float] = []
        delivered: list[float] = []
        late: list[int] = []
        done = trio.Event()
        inbound = {}

        def finished() -> None:
            window.release()  # window_size packets in flight end to end
            if len(delivered) + len(late) == packets:
                done.set()

        def perform(name: str, actions: list, switches: dict, discards: list) -> None:
            """As the hybrid shell: switches (per router: a header passed on in memory may
            match at the next one) and bob's discards are collected, to go to the daemon
            together (one write and one wait per batch)."""
            for action in actions:
                if isinstance(action, Switch):
                    switches.setdefault(name, []).append(action)
                elif isinstance(action, SendHeader):
                    nxt = action.neighbour
                    link = f"{name}-{nxt}"
                    perform(nxt, cores[nxt].header(action.data, link, 0.0), switches, discards)
                elif isinstance(action, Delivered):
                    discards.append(action.arrival.slot)

        def start(switches: dict, discards: list) -> None:
            for name, actions in switches.items():
                nursery.start_soon(switch, name, actions)
            if discards:
                nursery.start_soon(discard, discards)

        async def discard(slots: list[int]) -> None:
            await clients["bob"].request_many([(p.QubitDiscard,
                                                {"qubits": [p.QubitRef("bob", s)]})
                                               for s in slots])
            for _ in slots:
                delivered.append(time.perf_counter())
                finished()

        async def switch(name: str, actions: list[Switch]) -> None:
            replies = await clients[name].request_many(
                [(p.PayloadSwitch, {"link": a.link, "payload": a.payload}) for a in actions])
            switches: dict = {}
            discards: list = []
            for action, reply in zip(actions, replies):
                arrived = inbound.pop((name, action.payload))
                if isinstance(reply, p.Error):
                    late.append(reply.code)  # it never reaches bob
                    finished()
                    continue
                latencies.append((reply.t - arrived) * 1e6)
                perform(name, cores[name].switched(action.payload, True), switches, discards)
            start(switches, discards)

        async def arrivals(name: str, link: str) -> None:
            channel = clients[name].payloads(link)
            await clients[name].request(p.FlightOpen, link=link)
            async for batch in batches(channel):
                switches: dict = {}
                discards: list = []
                for m in batch:
                    if m.slot < 0:
                        inbound[(name, m.payload)] = m.t
                    perform(name, cores[name].arrival(m, 0.0), switches, discards)
                start(switches, discards)

        for i, name in enumerate(CHAIN[1:], start=1):
            nursery.start_soon(arrivals, name, f"{CHAIN[i - 1]}-{name}")
        await trio.sleep(0.1)
        window = trio.Semaphore(window_size)  # released as each packet reaches bob
        codec = HeaderCodec(KEY)
        alice = clients["alice"]

        async def send(seqs: range) -> None:
            """Alice sends these packets: a known state into the fibre each, in one write."""
            sent = await alice.request_many([(p.QubitPrepareSend, {"link": "alice-r1"})
                                             for _ in seqs])
            switches: dict = {}
            discards: list = []
            for seq, reply in zip(seqs, sent):
                if isinstance(reply, p.Error):
                    raise DaemonError(reply)
                h = HybridHeader("alice", "bob", 1, seq, 16, 0,
                                 PayloadDescriptor(PAYLOAD_QUBIT, 0, 1, reply.payload))
                perform("r1", cores["r1"].header(codec.encode(h), "alice-r1", 0.0), switches,
                        discards)
            start(switches, discards)

        t0 = time.perf_counter()
        seq = 0
        while seq < packets:  # a burst of what the window allows at once, one task each
            await window.acquire()
            n = 1
            while seq + n < packets and n < SEND_BURST:
                try:
                    window.acquire_nowait()
                except trio.WouldBlock:
                    break
                n += 1
            nursery.start_soon(send, range(seq, seq + n))
            seq += n
        with trio.fail_after(120):
            await done.wait()
        wall = (delivered[-1] if delivered else time.perf_counter()) - t0
        rtts = []
        for _ in range(500):
            t = time.perf_counter()
            await alice.request(p.StatsRequest)
            rtts.append((time.perf_counter() - t) * 1e6)
        nursery.cancel_scope.cancel()
    return {"packets": packets, "window": window_size,
            "delivered": len(delivered), "late": len(late),
            "packets_per_s": len(delivered) / wall,
            "decision_us_median": statistics.median(latencies) if latencies else None,
            "decision_us_p99": p99(latencies) if latencies else None,
            "decisions": len(latencies),
            "daemon_rtt_us_median": statistics.median(rtts), "daemon_rtt_us_p99": p99(rtts)}


async def _client(port: int, name: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with open_daemon("127.0.0.1", port, name, name) as client:
        task_status.started(client)
        await trio.sleep_forever()


def udp_rtt(n: int = 2000) -> dict:
    a, b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET,
                                                                           socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    out = []
    for _ in range(n):
        t = time.perf_counter()
        a.sendto(b"x" * 120, b.getsockname())
        data, addr = b.recvfrom(2048)
        b.sendto(data, addr)
        a.recvfrom(2048)
        out.append((time.perf_counter() - t) * 1e6)
    a.close()
    b.close()
    return {"udp_rtt_us_median": statistics.median(out), "udp_rtt_us_p99": p99(out)}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured(pid: int, port: int, window_size: int) -> dict:
    """One run through the daemon ``pid`` with ``window_size`` in flight, with its CPU."""
    cpu0, daemon0 = time.process_time(), _cpu_s(pid)
    result = trio.run(run_chain, port, window_size, PACKETS)
    packets = result["delivered"] + result["late"]
    result["daemon_cpu_us_per_packet"] = (_cpu_s(pid) - daemon0) / packets * 1e6
    result["routers_cpu_us_per_packet"] = (time.process_time() - cpu0) / packets * 1e6
    return result


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path, ready = Path(tmp) / "daemon.json", Path(tmp) / "ready.json"
        write_config(path, config())
        profile = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] \
            if os.environ.get("BENCH_PROFILE") else []
        daemon = subprocess.Popen([sys.executable, *profile, "-m", "emulator.daemon", "--config",
                                   str(path), "--ready-file", str(ready)],
                                  stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):  # bounded: 20 s
                if ready.exists():
                    break
                time.sleep(0.1)
            port = json.loads(ready.read_text())["port"]
            runs = [_measured(daemon.pid, port, math.ceil(window_for(TARGET) * k))
                    for k in WINDOW_FACTORS]
            udp = udp_rtt()
        finally:
            daemon.terminate()
            daemon.wait(10)
    clean = [r for r in runs if r["late"] == 0] or runs
    best = max(clean, key=lambda r: r["packets_per_s"])
    result = {"routers": 3, "budget_us": BUDGET_US, "latency_s": LATENCY_S,
              "target_packets_per_s": TARGET, "window_for_target": window_for(TARGET),
              **best, "runs": runs, **udp}
    result["load_average_1m"] = os.getloadavg()[0]  # the machine is shared: read with this
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
