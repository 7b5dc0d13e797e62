"""End to end: decoy-state BB84 with authenticated post-processing through ``qnet run``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from qnet_process import ROOT, run_qnet

from emulator.physics.channels import transmittance
from emulator.physics.detectors import background_yield, gain

METRO = str(ROOT / "scenarios" / "qkd-metro-25km.toml")

pytestmark = pytest.mark.e2e


def _run(tmp_path: Path, *args: str) -> dict:
    run_dir = tmp_path / "run"
    done = run_qnet("run", METRO, "--duration", "3", "--run-dir", str(run_dir),
                    "--no-progress", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    (qkd,) = json.loads((run_dir / "result.json").read_text())["qkd"]
    return qkd


def test_metro_keys_match_and_rates_follow_theory(tmp_path: Path) -> None:
    qkd = _run(tmp_path)
    assert qkd["key_sha256_a"] == qkd["key_sha256_b"]
    assert qkd["secret_bits"] == qkd["secret_bits_a"] > 0
    assert qkd["blocks_ok"] >= 1 and qkd["blocks_failed"] == 0 and qkd["auth_rejected"] == 0
    # gain per intensity: binomial over the expected pulses of that intensity, 4 sigma
    eta = transmittance(25, 0.2) * 0.1
    y0 = background_yield(1e-6)
    for mu, share in ((0.5, 0.8), (0.1, 0.1), (0.0, 0.1)):
        expected = float(gain(mu, eta, y0))
        pulses = qkd["pulses"] * share
        sigma = math.sqrt(expected * (1 - expected) / pulses) + math.sqrt(pulses) / qkd["pulses"]
        assert abs(qkd["gain_by_intensity"][f"{mu:g}"] - expected) < 4 * sigma + 1e-12
    assert 1.0 < qkd["ec_efficiency"] < 1.25
    assert qkd["pa_bits_per_pulse"] == pytest.approx(
        qkd["predicted"]["gllp_bits_per_pulse"], rel=0.15)
    for name in ("secret_bits_per_pulse", "secret_key_rate_bps", "ec_leaked_bits", "y1_lower",
                 "e1_upper", "qber_by_intensity", "realtime_factor"):
        assert qkd[name] is not None


def test_relay_bit_flips_are_rejected_and_keys_still_match(tmp_path: Path) -> None:
    faults = ('faults=[{at_s = 0.8, action = "corrupt", link = "alice-bob"}, '
              '{at_s = 1.6, action = "corrupt", link = "alice-bob"}]')
    qkd = _run(tmp_path, "--set", faults)
    assert qkd["auth_rejected"] >= 2
    assert qkd["key_sha256_a"] == qkd["key_sha256_b"]
    assert qkd["secret_bits"] > 0 and qkd["blocks_failed"] == 0
    relay_log = (tmp_path / "run" / "relay-alice-bob.log").read_text()
    assert relay_log.count("flipped a bit") == 2


def test_finite_key_mode_runs_end_to_end(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_qnet("run", METRO, "--duration", "6", "--run-dir", str(run_dir), "--no-progress",
                    "--set", "apps.0.finite_key=true")
    assert done.returncode == 0, done.stdout + done.stderr
    (qkd,) = json.loads((run_dir / "result.json").read_text())["qkd"]
    assert qkd["key_length_model"].startswith("finite-key")
    assert qkd["key_sha256_a"] == qkd["key_sha256_b"] and qkd["secret_bits"] > 0
    assert 0 < qkd["finite_key"]["phase_error_upper_mean"] < 0.5
