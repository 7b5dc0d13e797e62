"""End to end through ``qnet run``: ``ion-telecom.toml`` at its 8 km, beyond the crossover.
Each link's measured pairs/s matches its model within 4 Poisson sigma (the rate is pairs over
their span), the converted link beats the visible one, fidelities match within 4 sigma of
the model, and the report's crossover lies below the length run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from qnet_process import ROOT, alive, run_qnet

pytestmark = pytest.mark.e2e
K = 4


def test_ion_telecom_converted_link_beats_the_visible_one(tmp_path: Path) -> None:
    out = tmp_path / "ion.json"
    done = run_qnet("run", str(ROOT / "scenarios" / "ion-telecom.toml"), "--duration", "8",
                    "--run-dir", str(tmp_path / "run"), "--json", str(out), "--no-progress",
                    timeout=90)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert not [p for p in result["processes"] if alive(p["pid"])], "a process outlived the run"
    entries = {e["name"]: e for e in result["entanglement"]}
    for name in ("visible", "telecom"):
        e = entries[name]
        assert e["pairs"] >= 50, name
        model = e["pairs_per_s_model"]
        assert abs(e["pairs_per_s"] - model) < K * model / math.sqrt(e["pairs"]), name
        # sigma from the model: a third of the pairs per Pauli basis, agreement q = (1 + e)/2
        q = (1 + (4 * e["fidelity_model"] - 1) / 3) / 2
        sigma = math.sqrt(9 * q * (1 - q) / (4 * e["pairs"]))
        assert abs(e["fidelity_mean"] - e["fidelity_model"]) < K * sigma, name
    telecom, visible = entries["telecom"], entries["visible"]
    assert telecom["pairs_per_s"] > 3 * visible["pairs_per_s"]
    assert telecom["conversion"]["pairs_per_s_unconverted_model"] == pytest.approx(
        visible["pairs_per_s_model"])
    assert telecom["conversion"]["crossover_km"] < 8.0
