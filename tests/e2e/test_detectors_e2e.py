"""End to end: qkd-detectors through ``qnet run`` (3 emulated s): the ideal link's gain and
QBER follow the closed forms within 4 sigma; the real detectors' lost clicks (dead time) and
raised QBER (afterpulses) follow the saturated model within 4 sigma plus its approximation
(~1-2 % on the rate, ~1 % on the afterpulse share: docs/physics.md "Detector effects")."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from qnet_process import ROOT, alive, run_qnet

pytestmark = pytest.mark.e2e

SCENARIO = ROOT / "scenarios" / "qkd-detectors.toml"


def test_detectors_saturate_and_afterpulses_raise_the_qber(tmp_path: Path) -> None:
    done = run_qnet("run", str(SCENARIO), "--duration", "3", "--run-dir", str(tmp_path / "run"),
                    "--json", str(tmp_path / "out.json"), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert not [p for p in result["processes"] if alive(p["pid"])]
    by_link = {entry["link"]: entry for entry in result["qkd"]}
    ideal, real = by_link["alice-bob"], by_link["carol-dave"]
    for entry, slack in ((ideal, 0.0), (real, 0.03)):
        g, n = entry["predicted"]["gain"], entry["pulses"]
        assert n > 1e6
        # dead time makes counts sub-Poissonian: the binomial sigma is an upper bound
        assert abs(entry["gain"] - g) <= 4 * math.sqrt(g * (1 - g) / n) + slack * g, entry
        e, m = entry["predicted"]["qber"], entry["sample_bits"]  # the QBER's own sample
        share = entry["predicted"].get("afterpulse_share", 0.0)
        # the model's afterpulse share is within ~1 % of the sampler's (renewal liveness after
        # a count): 2 % of the share on top of 4 binomial sigma of the sampled QBER
        assert abs(entry["qber"] - e) <= 4 * math.sqrt(e * (1 - e) / m) + 0.02 * share, entry
    assert real["gain"] < 0.65 * ideal["gain"]
    assert real["qber"] - ideal["qber"] > 4 * math.sqrt(real["qber"] / real["sifted_bits"])
