"""qkd-detectors.toml: detector keys parse with ideal defaults, bad gates are refused, and the
BB84 predictions include dead time and afterpulses (the ideal link's are unchanged)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.physics import detector_effects as fx
from emulator.scenario import Detector, QuantumLink, ScenarioError, Source, load_scenario
from nodes.qkd.bb84.results import predicted_bb84

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "qkd-detectors.toml"


def test_defaults_are_ideal_and_gates_fit_a_slot():
    detector = Detector()
    assert not fx.link_effects(QuantumLink()).active
    assert detector.per_gate_dark_count(1e8) == detector.dark_count_probability
    assert Detector(dark_count_rate_hz=1e3, gate_width_ns=1.0).per_gate_dark_count(1e8) == \
        pytest.approx(1e-6, rel=1e-5)
    with pytest.raises(ValueError, match="gate_width_ns"):
        QuantumLink(source=Source(rate_hz=1e9), detector=Detector(gate_width_ns=2.0))


def test_gate_longer_than_a_slot_is_a_scenario_error():
    with pytest.raises(ScenarioError, match="gate_width_ns"):
        load_scenario(SCENARIO, ["links.1.quantum.detector.gate_width_ns=20"])


def test_predictions_include_dead_time_and_afterpulses():
    scenario = load_scenario(SCENARIO)
    ideal = predicted_bb84(scenario.links[0], scenario.apps[0], None)
    real = predicted_bb84(scenario.links[1], scenario.apps[1], None)
    assert "afterpulse_share" not in ideal
    assert real["gain"] < 0.6 * ideal["gain"]  # ~43 % of the clicks lost to dead time
    share = real["afterpulse_share"]
    assert 0.02 < share < fx.afterpulse_yield(fx.link_effects(scenario.links[1].quantum))
    assert real["qber"] == pytest.approx(fx.qber_with_afterpulses(ideal["qber"], share),
                                         rel=1e-9)
