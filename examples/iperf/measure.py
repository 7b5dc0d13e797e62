"""iperf3 client runs, one after the other, summarised as one JSON line (a qnet program result).

``python3 examples/iperf/measure.py --seconds 3 NAME=ADDRESS[,option=value...] ...``: for each
target, an iperf3 TCP test (``cc=reno`` picks its congestion control; ``udp=8M`` makes it
UDP) to the iperf3 server at ADDRESS, retried until that server listens (it may start a
moment later). The summary per target: receiver goodput in Mbit/s, TCP retransmissions,
congestion control and mean RTT, UDP datagrams sent and lost; with ``rtt_ms=`` and ``loss=``
(the path's), the Mathis et al. (1997) Reno bound MSS/RTT * sqrt(3/2)/sqrt(p) beside.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

MSS = 1448  # bytes: a 1500-byte MTU minus IPv4, TCP and timestamp-option headers
CONNECT_TRIES = 100


def run_iperf(address: str, seconds: float, udp_rate: str | None,
              congestion: str | None = None) -> dict:
    argv = ["iperf3", "-c", address, "-t", str(seconds), "-J"]
    argv += ["-u", "-b", udp_rate, "-l", "1200"] if udp_rate else []
    argv += ["-C", congestion] if congestion else []
    for _ in range(CONNECT_TRIES):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
        report = json.loads(done.stdout) if done.stdout.strip() else {}
        error = report.get("error") or done.stderr
        if done.returncode == 0 and not report.get("error"):
            return report["end"]
        if not any(word in error for word in ("connect", "refused", "busy", "reset")):
            raise RuntimeError(f"iperf3 to {address}: {error}")
        time.sleep(0.2)
    raise RuntimeError(f"iperf3 to {address}: no server free ({error})")


def summary(end: dict, udp: bool) -> dict:
    if udp:
        total = end["sum"]
        return {"mbit_s": round(total["bits_per_second"] / 1e6, 3),
                "packets": total["packets"], "lost_packets": total["lost_packets"],
                "lost_percent": round(total["lost_percent"], 3)}
    return {"mbit_s": round(end["sum_received"]["bits_per_second"] / 1e6, 3),
            "retransmits": end["sum_sent"].get("retransmits"),
            "congestion": end.get("sender_tcp_congestion"),
            "mean_rtt_ms": round(end["streams"][0]["sender"].get("mean_rtt", 0) / 1e3, 1)}


def mathis_mbit_s(rtt_ms: float, loss: float) -> float:
    """TCP Reno's steady-state bound (Mathis, Semke, Mahdavi, Ott, CCR 1997), in Mbit/s."""
    return MSS * 8 / (rtt_ms / 1e3) * math.sqrt(1.5) / math.sqrt(loss) / 1e6


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+",
                        help="NAME=ADDRESS[,udp=RATE][,cc=ALGORITHM][,rtt_ms=R,loss=P]")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    results = {}
    for target in args.targets:
        name, _, spec = target.partition("=")
        address, *options = spec.split(",")
        given = dict(option.split("=", 1) for option in options)
        udp = given.get("udp")
        entry = summary(run_iperf(address, args.seconds, udp, given.get("cc")),
                        udp is not None)
        if not udp and "rtt_ms" in given and "loss" in given:
            entry["mathis_mbit_s"] = round(mathis_mbit_s(float(given["rtt_ms"]),
                                                         float(given["loss"])), 3)
        results[name] = entry
        print(f"{time.strftime('%H:%M:%S')} {name} ({address}): {entry}", file=sys.stderr,
              flush=True)
    return results


if __name__ == "__main__":
    print(json.dumps(main()), flush=True)
