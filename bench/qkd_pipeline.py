"""Whole decoy-BB84 pipeline in real time: does it keep up with the source?

Runs ``scenarios/qkd-metro-25km.toml`` through the real CLI (daemon, two node processes,
relay, broker) at increasing source rates and reports, per rate, the realtime factor
(source seconds per CPU second of the busiest process: >= 1 means every stage keeps up),
the completion factor (source seconds / seconds until the last key, tail included), the
daemon's worst lag, the secret key rate and Cascade efficiency. The highest rate whose
completion factor stays >= 0.9 is reported as sustainable. Machine noted in the JSON.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
RATES = (1e8, 2e8, 4e8, 1e9)
DURATION_S = 8
SUSTAINABLE = 0.9  # completion factor: the run finished within ~10% of the source time


def one_run(rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "emulator", "run", "scenarios/qkd-metro-25km.toml",
             "--duration", str(DURATION_S), "--run-dir", f"{tmp}/run", "--no-progress",
             "--broker", "mosquitto", "--set", f"links.0.quantum.source.rate_hz={rate:g}",
             "--json", f"{tmp}/r.json"],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        if done.returncode not in (0, 1):
            return {"rate_hz": rate, "error": done.stderr[-1500:]}
        result = json.loads(Path(f"{tmp}/r.json").read_text())
    q = result["qkd"][0]
    return {
        "rate_hz": rate, "wall_s": result["wall_s"], "realtime_factor": q["realtime_factor"],
        "completion_factor": q["completion_factor"],
        "cpu_s": {k: q.get(k) for k in ("cpu_s_a", "cpu_s_b", "cpu_s_daemon")},
        "daemon_lag_s": q.get("daemon_lag_s"), "detections_per_s": q["detections"] / DURATION_S,
        "secret_key_rate_bps": q["secret_key_rate_bps"], "ec_efficiency": q.get("ec_efficiency"),
        "blocks_ok": q.get("blocks_ok"), "keys_match": q["key_sha256_a"] == q["key_sha256_b"],
    }


def main() -> dict:
    runs = [one_run(rate) for rate in RATES]
    kept_up = [r["rate_hz"] for r in runs if r.get("completion_factor", 0) >= SUSTAINABLE]
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores {platform.python_version()}",
        "scenario": "qkd-metro-25km", "duration_s": DURATION_S, "runs": runs,
        "highest_sustainable_rate_hz": max(kept_up) if kept_up else None,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "qkd_pipeline.json").write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
