"""End to end: decoy-state BB84 with authenticated post-processing through ``qnet run``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from cascade_model import leak_per_shannon_bit
from qnet_process import ROOT, run_qnet

from emulator.physics.channels import transmittance
from emulator.physics.detectors import background_yield, gain, qber
from emulator.physics.entropy import binary_entropy

METRO = str(ROOT / "scenarios" / "qkd-metro-25km.toml")

pytestmark = pytest.mark.e2e
K = 4  # standard errors


def _run(tmp_path: Path, *args: str) -> dict:
    run_dir = tmp_path / "run"
    done = run_qnet("run", METRO, "--duration", "3", "--run-dir", str(run_dir),
                    "--no-progress", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    (qkd,) = json.loads((run_dir / "result.json").read_text())["qkd"]
    return qkd


def test_metro_keys_match_and_rates_follow_theory(tmp_path: Path) -> None:
    """Values, not presence: equal keys, gains and QBER as the channel model says (K = 4
    standard errors of their binomial samples: a 6e-5 two-sided tail per comparison), key
    lengths within what privacy amplification may output, and Cascade's leakage as our own
    Cascade leaks on simulated blocks of the same size at the model QBER."""
    qkd = _run(tmp_path)
    assert qkd["key_sha256_a"] == qkd["key_sha256_b"]
    assert qkd["secret_bits"] == qkd["secret_bits_a"] > 0
    assert qkd["blocks_ok"] >= 1 and qkd["blocks_failed"] == 0 and qkd["auth_rejected"] == 0
    assert qkd["remote_errors"] == qkd["remote_errors_a"] == 0
    # gain per intensity: binomial over the expected pulses of that intensity, 4 sigma
    eta = transmittance(25, 0.2) * 0.1
    y0 = background_yield(1e-6)
    for mu, share in ((0.5, 0.8), (0.1, 0.1), (0.0, 0.1)):
        expected = float(gain(mu, eta, y0))
        pulses = qkd["pulses"] * share
        sigma = math.sqrt(expected * (1 - expected) / pulses) + math.sqrt(pulses) / qkd["pulses"]
        assert abs(qkd["gain_by_intensity"][f"{mu:g}"] - expected) < K * sigma + 1e-12
    q = float(qber(0.5, eta, y0, 0.015))
    assert abs(qkd["qber"] - q) < K * math.sqrt(q * (1 - q) / qkd["sample_bits"])
    # the delivered key is the PA output less the authentication refill, and PA outputs at
    # most what is left after the Cascade leakage, the verification tag and 2 log2(1/eps)
    assert qkd["secret_bits"] == qkd["pa_output_bits"] - qkd["auth_key_bits"]
    n, blocks = qkd["reconciled_bits"], qkd["blocks_ok"]
    assert 0 < qkd["pa_output_bits"] <= n - qkd["ec_leaked_bits"] - blocks * (
        122 + 2 * math.log2(1e10))
    # GLLP with the pooled decoy bounds the node measured: each block's length uses its own
    # bounds, whose spread is of order 1/sqrt(block detections); the pooled formula is an
    # upper bound up to that spread
    gllp = (qkd["y1_lower"] * 0.5 * math.exp(-0.5) / qkd["gain"]) * (
        1 - float(binary_entropy(qkd["e1_upper"])))
    assert qkd["pa_output_bits"] <= n * gllp * (1 + K / math.sqrt(n)) - qkd["ec_leaked_bits"]
    mean, sd = leak_per_shannon_bit(n // blocks, q, qkd["sample_bits"] // blocks, "original",
                                    blocks=3)
    f_model = qkd["ec_leaked_bits"] / (n * float(binary_entropy(q)))
    assert abs(f_model - mean) < K * sd / math.sqrt(blocks) + K * sd / math.sqrt(3)
    assert qkd["realtime_factor"] > 0


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
