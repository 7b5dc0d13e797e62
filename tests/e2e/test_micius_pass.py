"""End to end: the first 16 s of the micius-pass scenario (range 1200 -> ~1110 km) through
``qnet run``: the measured gain in each 10 s bin matches the pass model within 4 sigma, and
the sifted key rate at ~1200 km is within a factor 2 of Liao et al.'s kHz-level figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from qnet_process import ROOT, alive, run_qnet

from emulator.physics.detectors import background_yield, gain
from emulator.scenario import load_scenario

MICIUS = ROOT / "scenarios" / "micius-pass.toml"
LIAO_KHZ_BPS = 1000.0  # Liao et al., Nature 549, 43 (2017): "kilohertz key rate" at 1200 km

pytestmark = pytest.mark.e2e


def test_micius_pass_follows_the_model(tmp_path: Path) -> None:
    done = run_qnet("run", str(MICIUS), "--duration", "16", "--time-scale", "2",
                    "--run-dir", str(tmp_path / "run"), "--json", str(tmp_path / "out.json"),
                    "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert not [p for p in result["processes"] if alive(p["pid"])]
    (qkd,) = result["qkd"]
    bins = qkd["pass"]["bins"]
    assert len(bins) >= 2 and sum(b["pulses"] for b in bins) > 5e8
    link = load_scenario(MICIUS).links[0]
    q = link.quantum
    y0 = float(background_yield(q.detector.dark_count_probability))
    for b in bins:
        # the model, recomputed here at the bin's middle (the loss changes < 1 dB in a bin)
        eta = float(q.pass_.transmittance(b["t_s"])) * q.detector.efficiency
        mix = sum(w * float(gain(mu, eta, y0)) for mu, w in
                  zip(q.source.intensities, q.source.intensity_probabilities, strict=True))
        assert b["predicted_gain"] == pytest.approx(mix, rel=0.05)
        sigma = math.sqrt(b["predicted_gain"] * (1 - b["predicted_gain"]) / b["pulses"])
        assert abs(b["gain"] - b["predicted_gain"]) <= 4 * sigma, b  # ~2e4 clicks a bin
        assert 1050 < b["range_km"] < 1205 and 37 < b["loss_db"] < 40.1
    first = bins[0]
    assert LIAO_KHZ_BPS / 2 < first["sifted_rate_bps"] < 2 * LIAO_KHZ_BPS
    at_1200 = qkd["pass"]["model_at_range"]["1200_km"]
    assert LIAO_KHZ_BPS / 2 < at_1200["sifted_rate_bps"] < 2 * LIAO_KHZ_BPS
    assert at_1200["loss_db"] == pytest.approx(40.0, abs=1.0)
    assert qkd["key_sha256_a"] == qkd["key_sha256_b"] and qkd["blocks_failed"] == 0
