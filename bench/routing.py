"""Routing on mesh-16 through ``qnet run``: convergence after each link cut (target: detection
+ < 50 ms) and the start-up time of the 16-router run.

Runs ``scenarios/mesh-16.toml`` (16 node processes, 26 relays, mosquitto broker) twice and
reads result.json: ``routing.faults`` (detection and convergence per cut, computed by the
orchestrator from the nodes' events), the wall time from launch to the run's ``start`` event
(every process ready), and the routing's own start-up: from the first adjacency to the last
route change before the first fault (emulated time = wall at time_scale 1). JSON into
bench/results/routing.json with the machine and its load noted.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TARGET_CONVERGENCE_MS = 50.0


def one_run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        launched = time.time()
        done = subprocess.run([sys.executable, "-m", "emulator", "run", "scenarios/mesh-16.toml",
                               "--run-dir", f"{tmp}/run", "--no-progress", "--broker",
                               "mosquitto", "--json", f"{tmp}/r.json"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"qnet run exited {done.returncode}: "
                               f"{(done.stdout + done.stderr)[-2000:]}")
        result = json.loads(Path(f"{tmp}/r.json").read_text())
    events = result["events"]
    start = next(e for e in events if e["kind"] == "start")
    first_fault = min(e["t_emu"] for e in events if e["kind"] == "fault")
    ups = [e["at"] for e in events if e["kind"] == "neighbour_up" and e["at"] < first_fault]
    changes = [e["at"] for e in events if e["kind"] == "route_changed" and e["at"] < first_fault]
    cuts = [f for f in result["routing"]["faults"] if f["action"] == "cut"]
    return {
        "launch_to_start_s": start["wall"] - launched,
        "routing_startup_s": max(changes) - min(ups),
        "wall_s": result["wall_s"],
        "cuts": [{k: f[k] for k in ("target", "detection_ms", "convergence_ms")} for f in cuts],
        "streams_lost": [s["lost"] for s in result["streams"]],
        "streams_max_gap_ms": [s["max_gap_ms"] for s in result["streams"]],
        "dead_interval_ms": 1e3 * result["routing"]["dead_interval_s"],
    }


def main() -> dict:
    load = os.getloadavg()[0]
    runs = [one_run() for _ in range(2)]
    cuts = [c for r in runs for c in r["cuts"] if c["convergence_ms"] is not None]
    conv = [c["convergence_ms"] for c in cuts]
    det = [c["detection_ms"] for c in cuts]
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores {platform.python_version()}",
        "load_average_1min_at_start": load,
        "scenario": "scenarios/mesh-16.toml (hello 0.2 s, dead 0.8 s, 3 streams at 50 Hz)",
        "cuts_measured": len(cuts),
        "detection_ms_median": statistics.median(det),
        "detection_ms_max": max(det),
        "convergence_ms_median": statistics.median(conv),
        "convergence_ms_max": max(conv),
        "target_convergence_ms": TARGET_CONVERGENCE_MS,
        "convergence_median_meets_target": statistics.median(conv) < TARGET_CONVERGENCE_MS,
        "launch_to_start_s_median": statistics.median(r["launch_to_start_s"] for r in runs),
        "routing_startup_s_median": statistics.median(r["routing_startup_s"] for r in runs),
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "routing.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
