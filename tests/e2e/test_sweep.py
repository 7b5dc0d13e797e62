"""``qnet sweep`` writes a CSV row per value and a plot, each point a real run."""

from __future__ import annotations

import csv
import json
import signal
import time
from pathlib import Path

import pytest
from qnet_process import ROOT, run_qnet, running_qnet

pytestmark = pytest.mark.e2e


def test_sweep_over_distance_writes_csv_and_png(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    done = run_qnet("sweep", str(ROOT / "scenarios" / "qkd-metro-25km.toml"),
                    "--param", "links.0.length_km", "--values", "10,40", "--out", str(out),
                    "--duration", "2", "--set", "apps.0.block_bits=200000", timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [float(r["value"]) for r in rows] == [10.0, 40.0]
    near, far = (float(r["pa_bits_per_pulse"]) for r in rows)
    assert near > far > 0
    for row in rows:
        assert float(row["pa_bits_per_pulse"]) == pytest.approx(
            float(row["gllp_bits_per_pulse"]), rel=0.15)
        assert float(row["gllp_bits_per_pulse"]) < float(row["plob_bits_per_pulse"])
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "runs" / "links.0.length_km=10" / "result.json").exists()


def test_sweep_rejects_a_bad_parameter_before_running(tmp_path: Path) -> None:
    done = run_qnet("sweep", str(ROOT / "scenarios" / "qkd-metro-25km.toml"),
                    "--param", "links.0.length_km", "--values", "10,-5", "--out",
                    str(tmp_path / "s"))
    assert done.returncode == 2 and "links[0].length_km" in done.stderr
    assert not (tmp_path / "s").exists()


def test_a_second_sweep_into_the_same_folder_works(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    stamps = []
    for _ in range(2):
        done = run_qnet("sweep", str(ROOT / "scenarios" / "qkd-metro-25km.toml"),
                        "--param", "links.0.length_km", "--values", "25", "--out", str(out),
                        "--duration", "1", timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads((out / "runs" / "links.0.length_km=25" / "result.json").read_text())
        stamps.append({p["name"]: p["pid"] for p in result["processes"]})
        assert all(p["exit_code"] == 0 for p in result["processes"])
    assert stamps[0]["alice"] != stamps[1]["alice"]  # the second run's own processes
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [float(r["value"]) for r in rows] == [25.0]


def test_ctrl_c_during_a_sweep_exits_130(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    with running_qnet("sweep", str(ROOT / "scenarios" / "qkd-metro-25km.toml"),
                      "--param", "links.0.length_km", "--values", "10,20", "--out", str(out),
                      "--duration", "20") as process:
        deadline = time.monotonic() + 60
        while not list(out.glob("runs/*/relay-*.ready.json")) and time.monotonic() < deadline:
            assert process.poll() is None
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "Aborted" not in err
