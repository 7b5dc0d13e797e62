"""Key service throughput: ETSI 014 enc_keys over mutual TLS, and the key store's commits.

Two key-service processes (alice, the allocator, and bob; ``tests/services/kme_process.py``,
the peer channel over loopback TCP) hold the same pre-deposited keys. Clients (threads of
this process, each with its own keep-alive TLS connection, so the session is reused) ask
alice for one 256-bit key per request as master SAE; each answer waits for bob's ``Ack``.
Reported for 1 and 8 concurrent clients: requests/s and latency p50/p99 (ms). Then, in this
process, the SQLite store alone: durable commits/s (``synchronous=FULL``) for one-key
allocations and for 100 kbit block deposits.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from emulator.child_config import write_config
from emulator.pki import create_run_pki
from nodes.services.keys import DELIVERED, KeyDB, cut_block
from nodes.services.kme.client import KmeClient, client_context

RESULTS = Path(__file__).parent / "results" / "kms.json"
ROOT = Path(__file__).resolve().parents[1]
SAES = {"sae-a": "alice", "sae-b": "bob"}
REQUESTS = {1: 1500, 8: 3200}  # per run, over all clients
WARMUP = 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_kmes(tmp: Path) -> tuple[list[subprocess.Popen], dict[str, int], object]:
    from tests.services.kme_process import HarnessConfig

    pki = create_run_pki(tmp / "kms", ["alice", "bob"], list(SAES))
    ports = {"alice": _free_port(), "bob": _free_port()}
    peer_port, key = _free_port(), os.urandom(32).hex()
    processes = []
    for node, peer in (("alice", "bob"), ("bob", "alice")):
        config = HarnessConfig(node=node, peer=peer, saes=SAES,
                               database=str(tmp / f"{node}.sqlite"),
                               cert=str(pki.kmes[node].cert), key=str(pki.kmes[node].key),
                               ca=str(pki.ca), https_port=ports[node], peer_port=peer_port,
                               link_key=key, blocks=40, bits_per_block=256 * 500)
        write_config(tmp / f"{node}.json", config)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "tests.services.kme_process", "--config",
             str(tmp / f"{node}.json"), "--ready-file", str(tmp / f"{node}.ready")],
            cwd=ROOT, stdout=open(tmp / f"{node}.log", "w"), stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 60
    while not all((tmp / f"{n}.ready").exists() for n in ports):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            raise RuntimeError("key services did not start")
        time.sleep(0.05)
    return processes, ports, pki


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(url: str, context, clients: int, total: int, servers: dict[str, int]) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    errors = []

    def worker(n: int) -> None:
        client = KmeClient(url, context)
        try:
            for _ in range(WARMUP // clients + 1):
                client.enc_keys("sae-b", 1)
            start_gate.wait()
            mine = []
            for _ in range(n):
                t = time.perf_counter()
                client.enc_keys("sae-b", 1)
                mine.append(time.perf_counter() - t)
            with lock:
                latencies.extend(mine)
        except Exception as exc:  # reported, not hidden
            errors.append(repr(exc))
        finally:
            client.close()

    start_gate = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=worker, args=(total // clients,)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    t0 = time.perf_counter()
    cpu0 = {name: _cpu_s(pid) for name, pid in servers.items()} | {"clients": time.process_time()}
    for thread in threads:
        thread.join(timeout=300)
    wall = time.perf_counter() - t0
    cpu1 = {name: _cpu_s(pid) for name, pid in servers.items()} | {"clients": time.process_time()}
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {"clients": clients, "requests": len(latencies), "errors": errors[:3],
            "requests_per_s": len(latencies) / wall, "p50_ms": 1000 * q[49],
            "p99_ms": 1000 * q[98],
            "cpu_ms_per_request": {name: 1000 * (cpu1[name] - cpu0[name]) / max(1, len(latencies))
                                   for name in cpu0}}


def _store_commits(tmp: Path) -> dict:
    db = KeyDB(tmp / "store.sqlite")
    rng = np.random.default_rng(1)
    t = time.perf_counter()
    blocks = 20
    for block in range(blocks):
        bits = rng.integers(0, 2, 100_000, dtype=np.uint8)
        db.deposit("bob", "l", block, cut_block("l", block, bits, 256).keys)
    deposit_s = time.perf_counter() - t
    n = 1000
    t = time.perf_counter()
    for _ in range(n):
        db.allocate("bob", 1, DELIVERED, "m", "s", 256)
    allocate_s = time.perf_counter() - t
    db.close()
    return {"allocate_commits_per_s": n / allocate_s,
            "deposit_blocks_per_s": blocks / deposit_s,
            "deposit_keys_per_s": blocks * 390 / deposit_s, "synchronous": "FULL",
            "journal_mode": "WAL"}


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        load_before = os.getloadavg()[0]
        processes, ports, pki = _start_kmes(tmp)
        try:
            issued = pki.saes["sae-a"]
            context = client_context(issued.cert, issued.key, pki.ca)
            url = f"https://127.0.0.1:{ports['alice']}"
            servers = {"alice": processes[0].pid, "bob": processes[1].pid}
            runs = [_load(url, context, clients, REQUESTS[clients], servers)
                    for clients in (1, 8)]
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=10)
        store = _store_commits(tmp)
    result = {"enc_keys": runs, "store": store, "cpus": os.cpu_count(),
              "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0],
              "note": "two key-service processes and the client threads share the machine"}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
