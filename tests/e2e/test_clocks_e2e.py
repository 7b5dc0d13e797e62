"""End to end through ``qnet run``: ``scenarios/clocks.toml`` (a Bell pair between two detuned
clocks against unentangled Ramsey qubits). Both estimates of D = delta_a - delta_b must match
the scenario's D within 4 of their standard deviations (first-order 1/(sqrt M 2 pi tau)), the
model sigmas must follow the rounds and interrogation times the nodes reported, and no
process may outlive the run. The statistics of repeated runs are tests/daemon/test_clock_memories.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from qnet_process import ROOT, alive, run_qnet

from emulator.physics import clocks

pytestmark = pytest.mark.e2e
K = 4


def test_clocks_compare_bell_and_unentangled(tmp_path: Path) -> None:
    out = tmp_path / "clocks.json"
    done = run_qnet("run", str(ROOT / "scenarios" / "clocks.toml"), "--duration", "5",
                    "--run-dir", str(tmp_path / "run"), "--json", str(out), "--no-progress",
                    timeout=90)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert not [p for p in result["processes"] if alive(p["pid"])], "a process outlived the run"
    (entry,) = result["clocks"]
    d = entry["difference_true_hz"]
    assert d == pytest.approx(0.35 - (-0.25))
    assert entry["remote_errors"] == 0
    ent, loc = entry["entangled"], entry["unentangled"]
    # the entangled rounds are few (pairs arrive stale and are dropped: see the report)
    assert ent["rounds"] >= 5 and loc["rounds"] >= 100
    tau = ent["interrogation_s"]
    assert tau >= 0.1
    assert ent["sigma_hz"] == pytest.approx(1 / (math.sqrt(ent["rounds"]) * 2 * math.pi * tau))
    assert ent["sigma_model_hz"] == pytest.approx(
        math.sqrt(clocks.entangled_variance(ent["rounds"], tau)))
    assert abs(ent["estimate_hz"] - d) < K * ent["sigma_hz"]
    assert abs(loc["estimate_hz"] - d) < K * loc["sigma_hz"]
    taus, counts = loc["interrogation_s"], loc["per_node_rounds"]
    assert all(t >= 0.1 for t in taus.values())
    assert loc["sigma_model_hz"] == pytest.approx(math.sqrt(sum(
        clocks.entangled_variance(counts[x], taus[x], 1) for x in taus)))
    assert loc["sigma_hz"] == pytest.approx(loc["sigma_model_hz"])
    # per round at equal interrogation time the Bell pair's sigma is sqrt 2 below
    per_round_ent = ent["sigma_hz"] * math.sqrt(ent["rounds"]) * tau
    per_round_loc = math.sqrt(sum((1 / (2 * math.pi)) ** 2 for _ in taus))
    assert per_round_loc / per_round_ent == pytest.approx(math.sqrt(2))
    marks = [c["rounds"] for c in ent["checkpoints"]]
    assert marks == sorted(marks) and marks[-1] <= ent["rounds"]
