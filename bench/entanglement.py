"""Entanglement layer end to end: EPR pairs delivered and measured per second over the SDK
between two node processes, and the teleport round trip.

Anchors (issue 4, this machine): SimulaQron 4.1.2 5-7 pairs/s and ~206 ms per teleport;
QuNetSim 23 pairs/s, 76 ms. Targets: >= 5,000 pairs/s, teleport round trip median <= 5 ms.
Pairs: ``nodes/apps/example_pairs.py`` run as its own process at each node, talking only to
its node's local app socket (heralded pairs -> measure in a Pauli basis -> outcomes to the
other end over the relay -> fidelity estimate). Teleport: ``scenarios/teleport.toml`` (0 ms
classical delay), median over its states of alice's wall time from preparing the input to
bob's acknowledgement of the correction. Each measured three times via the real ``qnet run``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PAIRS = 50_000

SDK_SCENARIO = f"""
[scenario]
name = "bench-pairs"
description = "two nodes, one 1 km heralded link, example_pairs over the app socket"
duration_s = 8
[[nodes]]
name = "alice"
[nodes.memory]
slots = 8192
[[nodes]]
name = "bob"
[nodes.memory]
slots = 8192
[[links]]
a = "alice"
b = "bob"
length_km = 1
[links.classical]
delay_ms = 0
[links.entanglement]
attempt_rate_hz = 1e6
source_fidelity = 0.95
[[apps]]
kind = "external"
a = "alice"
b = "bob"
command = ["python", "-m", "nodes.apps.example_pairs", "{PAIRS}"]
"""


def qnet(scenario: str, tmp: str, *extra: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "emulator", "run", scenario, "--run-dir",
                           f"{tmp}/run", "--no-progress", "--json", f"{tmp}/r.json", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"qnet run exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(Path(f"{tmp}/r.json").read_text())


def pairs_run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench-pairs.toml"
        path.write_text(SDK_SCENARIO)
        (entry,) = qnet(str(path), tmp)["entanglement"]
    return {k: entry[k] for k in ("pairs", "pairs_per_wall_s", "pairs_per_s", "fidelity_mean",
                                  "fidelity_std")}


def teleport_run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        (entry,) = qnet(str(ROOT / "scenarios" / "teleport.toml"), tmp, "--duration", "5")[
            "teleport"]
    return {k: entry[k] for k in ("count", "round_trip_ms_median", "round_trip_ms_p90",
                                  "fidelity_mean", "fidelity_model")}


def main() -> dict:
    pairs = [pairs_run() for _ in range(3)]
    teleports = [teleport_run() for _ in range(3)]
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores {platform.python_version()}",
        "epr_pairs_per_wall_s_median": statistics.median(r["pairs_per_wall_s"] for r in pairs),
        "epr_target_per_s": 5000,
        "teleport_round_trip_ms_median": statistics.median(
            r["round_trip_ms_median"] for r in teleports),
        "teleport_target_ms": 5.0,
        "pairs_runs": pairs,
        "teleport_runs": teleports,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "entanglement.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
