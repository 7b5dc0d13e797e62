"""Wire shaper overhead (``qnet run --netns``): what a zero-delay, unshaped shaper between two
namespaces costs against a bare veth pair.

Both cases join two fresh namespaces (10.9.0.1 and 10.9.0.2): once by a veth pair, once by
``python -m emulator.netns.shaper`` moving Ethernet frames between two TAPs as in a run.
Reported: iperf3 TCP throughput (MSS 1448, i.e. 1514-byte frames) and the shaper process's CPU
share meanwhile (it is single-threaded: one core at most; the veth pair keeps its segmentation
offloads, so its TCP moves 64 kB segments, not 1500-byte frames), and UDP echo round trips (64 bytes,
``ROUNDS`` sequential) whose median difference / 2 is the shaper's added one-way latency.
Targets (issue 10): >= 500 Mbit/s per link, <= 100 us added median. Needs root and iperf3.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import trio

from emulator.child_config import Direction, write_config
from emulator.netns.kernel import entered
from emulator.netns.shaper import WireConfig, WireEnd
from emulator.supervise import Child, running

ROUNDS = 2000
WARMUP = 100
IPERF_S = 3
ECHO_PORT = 7007
MSS = 1448  # 1500-byte IP packets with TCP timestamps
ADDR = ("10.9.0.1", "10.9.0.2")
RESULTS = Path(__file__).parent / "results" / "shaper.json"
TARGET_MBPS, TARGET_ADDED_US = 500.0, 100.0
ECHO_SERVER = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
               f"s.bind(('{ADDR[1]}', {ECHO_PORT}))\n"
               "while True:\n    data, peer = s.recvfrom(2048)\n    s.sendto(data, peer)\n")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def _namespaces():
    tag = secrets.token_hex(3)
    names = [f"qnb-{tag}-{i}" for i in range(2)]
    try:
        for name in names:
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _veth(names: list[str]) -> None:
    """A veth pair created straight into the two namespaces (nothing in the root one)."""
    _ip("link", "add", "qb0", "netns", names[0], "type", "veth", "peer", "name", "qb1",
        "netns", names[1])
    for i, name in enumerate(names):
        _ip("-n", name, "address", "add", f"{ADDR[i]}/24", "dev", f"qb{i}")
        _ip("-n", name, "link", "set", f"qb{i}", "up")


def _wire_config(names: list[str]) -> WireConfig:
    ends = [WireEnd(node=f"n{i}", netns=f"/run/netns/{names[i]}", ifname=f"q-n{1 - i}",
                    addr4=f"{ADDR[i]}/24", addr6=f"fd00:9::{i + 1}/64") for i in range(2)]
    return WireConfig(run_id="bench", t0=0.0, time_scale=1.0, seed=1, name="n0-n1",
                      a=ends[0], b=ends[1], a_to_b=Direction(), b_to_a=Direction())


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _iperf(names: list[str]) -> float:
    """TCP goodput ns0 -> ns1 in Mbit/s (iperf3 -J, one-off server)."""
    server = subprocess.Popen(["ip", "netns", "exec", names[1], "iperf3", "-s", "-1", "-B",
                               ADDR[1]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):  # the server needs a moment to listen
            done = subprocess.run(["ip", "netns", "exec", names[0], "iperf3", "-c", ADDR[1],
                                   "-t", str(IPERF_S), "-J"], capture_output=True, text=True,
                                  timeout=IPERF_S + 20)
            if done.returncode == 0:
                report = json.loads(done.stdout)
                return report["end"]["sum_received"]["bits_per_second"] / 1e6
            time.sleep(0.1)
        raise RuntimeError(f"iperf3 failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    finally:
        server.kill()
        server.wait()


def _echo_rtts(names: list[str]) -> list[float]:
    """``ROUNDS`` sequential 64-byte UDP echoes from ns0 (round trips in seconds)."""
    server = subprocess.Popen(["ip", "netns", "exec", names[1], sys.executable, "-c",
                               ECHO_SERVER])
    try:
        with entered(f"/run/netns/{names[0]}"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.settimeout(0.2)
            rtts, message = [], b"x" * 64
            for i in range(ROUNDS + WARMUP + 50):
                start = time.perf_counter()
                sock.sendto(message, (ADDR[1], ECHO_PORT))
                try:
                    sock.recvfrom(2048)
                except TimeoutError:  # the server not up yet, or a lost datagram
                    continue
                if i >= WARMUP and len(rtts) < ROUNDS:
                    rtts.append(time.perf_counter() - start)
        return rtts
    finally:
        server.kill()
        server.wait()


def _measure(names: list[str], pid: int | None = None) -> dict:
    cpu0, t0 = (_cpu_s(pid), time.monotonic()) if pid else (0.0, 0.0)
    mbps = _iperf(names)
    cpu = (_cpu_s(pid) - cpu0) / (time.monotonic() - t0) if pid else None
    rtts = sorted(_echo_rtts(names))
    return {"tcp_mbit_s": round(mbps, 1),
            "tcp_segments_per_s": round(mbps * 1e6 / (MSS * 8)),
            "cpu_share_during_iperf": cpu and round(cpu, 3),
            "rtt_us_median": round(statistics.median(rtts) * 1e6, 1),
            "rtt_us_p90": round(rtts[int(0.9 * len(rtts))] * 1e6, 1), "rounds": len(rtts)}


async def _through_shaper(names: list[str], directory: Path) -> dict:
    config = directory / "wire.json"
    write_config(config, _wire_config(names))
    child = Child("wire-bench", "wire", [sys.executable, "-m", "emulator.netns.shaper",
                                         "--config", str(config), "--ready-file",
                                         str(directory / "ready.json")],
                  directory / "wire.log", ready_file=directory / "ready.json")
    async with running(child, ready_timeout=15):
        return await trio.to_thread.run_sync(_measure, names, child.pid)


def main() -> dict:
    if os.geteuid() != 0 or not all(shutil.which(p) for p in ("ip", "iperf3")):
        return {"skipped": "needs root, ip and iperf3"}
    with _namespaces() as names:
        _veth(names)
        veth = _measure(names)
    with _namespaces() as names, tempfile.TemporaryDirectory() as tmp:
        shaper = trio.run(_through_shaper, names, Path(tmp))
    added = (shaper["rtt_us_median"] - veth["rtt_us_median"]) / 2
    # the shaper's cost: Mbit carried per CPU second it used, i.e. what one core would carry
    # if that cost stayed linear (it shares 2 cores with iperf3, the kernel and others)
    shaper["mbit_per_shaper_cpu_s"] = round(shaper["tcp_mbit_s"]
                                            / max(shaper["cpu_share_during_iperf"], 1e-3), 1)
    result = {"veth": veth, "shaper": shaper, "added_one_way_us_median": round(added, 1),
              "targets": {"tcp_mbit_s": TARGET_MBPS, "added_one_way_us": TARGET_ADDED_US},
              "meets_throughput": shaper["tcp_mbit_s"] >= TARGET_MBPS,
              "meets_latency": added <= TARGET_ADDED_US}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
