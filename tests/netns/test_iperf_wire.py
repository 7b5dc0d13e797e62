"""iperf3 across one shaped wire between two namespaces (the shaper of ``qnet run --netns``):
TCP reaches the configured rate, UDP loses what the configured loss says, kernel TCP
retransmits what the wire dropped (counted by iperf3 and seen in the capture)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import trio

from tests.netns.handmade import missing, namespaces, shaper_between

pytestmark = pytest.mark.skipif(missing("iperf3") is not None, reason=str(missing("iperf3")))
SERVER, MSS, FRAME = "10.9.0.2", 1448, 1514  # a full TCP segment is a 1514-byte frame


def iperf(names: list[str], *client: str, seconds: float) -> dict:
    """One iperf3 test from the first namespace to the second: its JSON report."""
    server = subprocess.Popen(["ip", "netns", "exec", names[1], "iperf3", "-s", "-1", "-B",
                               SERVER], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):  # until the server listens (bounded)
            done = subprocess.run(["ip", "netns", "exec", names[0], "iperf3", "-c", SERVER,
                                   "-t", str(seconds), "-J", *client], capture_output=True,
                                  text=True, timeout=seconds + 30)
            report = json.loads(done.stdout) if done.stdout.strip() else {}
            if done.returncode == 0 and "error" not in report:
                return report
            if "connect" not in report.get("error", "connect"):
                raise AssertionError(report.get("error", done.stderr))
            trio.run(trio.sleep, 0.1)
        raise AssertionError(f"iperf3 never connected: {done.stderr}")
    finally:
        server.kill()
        server.wait()


def through_wire(tmp_path: Path, *client: str, seconds: float, **wire) -> dict:
    async def main() -> dict:
        async with shaper_between(names, tmp_path, **wire):
            return await trio.to_thread.run_sync(lambda: iperf(names, *client,
                                                               seconds=seconds))

    with namespaces(2) as names:
        return trio.run(main)


def test_tcp_reaches_the_configured_rate(tmp_path: Path) -> None:
    rate = 20e6
    report = through_wire(tmp_path, "-O", "1", seconds=3, rate_bps=rate)
    goodput = report["end"]["sum_received"]["bits_per_second"]
    line_rate = goodput * FRAME / MSS  # what the wire serialized, headers included
    assert abs(line_rate / rate - 1) < 0.10, (goodput, line_rate)


def test_udp_loss_within_binomial_bounds(tmp_path: Path) -> None:
    loss = 0.02
    report = through_wire(tmp_path, "-u", "-b", "8M", "-l", "1200", seconds=2, loss=loss)
    total = report["end"]["sum"]["packets"]
    lost = report["end"]["sum"]["lost_packets"]
    sigma = math.sqrt(total * loss * (1 - loss))
    assert total > 1000
    assert abs(lost - total * loss) <= 4 * sigma + 1, (lost, total)


@pytest.mark.skipif(missing("iperf3", "tshark") is not None,
                    reason=str(missing("iperf3", "tshark")))
def test_tcp_retransmits_what_the_wire_dropped(tmp_path: Path) -> None:
    capture = tmp_path / "capture.pcapng"
    report = through_wire(tmp_path, seconds=2, loss=0.02, rate_bps=50e6,
                          capture=str(capture))
    assert report["end"]["sum_sent"]["retransmits"] > 0
    shown = subprocess.run(["tshark", "-r", str(capture), "-Y",
                            "tcp.analysis.retransmission || tcp.analysis.fast_retransmission",
                            "-T", "fields", "-e", "frame.number"], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.split()) > 0, "the capture shows no retransmission"
