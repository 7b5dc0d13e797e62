"""Quickstart start-up: wall seconds from launching ``qnet run`` to bob's first detection.

Target < 3 s. Runs the real CLI (broker, daemon, nodes, relay as processes) with a short
duration; measured three times, the median reported. Machine noted in the JSON.
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


def one_run(broker: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        launched = time.time()
        done = subprocess.run([sys.executable, "-m", "emulator", "run",
                               "scenarios/quickstart.toml", "--duration", "1",
                               "--run-dir", f"{tmp}/run", "--no-progress", "--broker", broker,
                               "--json", f"{tmp}/r.json"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"qnet run exited {done.returncode}: {done.stderr[-2000:]}")
        result = json.loads(Path(f"{tmp}/r.json").read_text())
    first = result["qkd"][0]["first_detection_wall"]
    return {"startup_to_first_detection_s": first - launched, "wall_s": result["wall_s"]}


def main() -> dict:
    out: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores {platform.python_version()}"}
    for broker in ("embedded", "mosquitto"):
        runs = [one_run(broker) for _ in range(3)]
        out[broker] = {
            "startup_to_first_detection_s_median": statistics.median(
                r["startup_to_first_detection_s"] for r in runs),
            "runs": runs,
            "target_s": 3.0,
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
