"""The BB84 block estimate with ``decoy_estimator = "lp"``: the LP over the sender's stated
P(n) replaces Ma05's Y1_L, e1_U, Q1; WCP blocks agree with the analytic estimate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emulator.physics import channels, detectors, sources
from nodes.qkd.blocks import PostprocessingConfig, decoy_estimate
from nodes.qkd.sifting import BatchRecord

PROBABILITIES = (0.8, 0.1, 0.1)
SLOTS = 10**10
P_DC, E_DET = 1e-6, 0.015


def model_record(rows, eta):
    """One batch whose counts are the channel model's expectations (no sampling noise)."""
    y0 = float(detectors.background_yield(P_DC))
    q = np.array([sources.click_probability(pn, eta, y0) for pn in rows])
    eq = np.array([sources.error_click_probability(pn, eta, y0, E_DET) for pn in rows])
    detections = np.round(q * SLOTS * np.array(PROBABILITIES)).astype(np.int64)
    matched = detections // 2
    errors = np.round(eq / q * matched).astype(np.int64)
    return BatchRecord(0, SLOTS, detections, matched, errors, int(matched[0]),
                       np.zeros(0, np.uint8), complete=True)


def config(intensities, rows):
    return PostprocessingConfig(intensities=intensities, probabilities=PROBABILITIES,
                                photon_numbers=None if rows is None else
                                tuple(tuple(pn) for pn in rows))


@pytest.mark.parametrize("kind", ["wcp", "thermal", "spdc"])
def test_lp_estimate_is_below_the_true_single_photon_gain(kind):
    intensities = (0.1, 0.02, 0.0) if kind == "spdc" else (0.5, 0.1, 0.0)
    rows = [sources.distribution(kind, mu, 0.6, 1e-6) for mu in intensities]
    eta = float(channels.transmittance(25.0, 0.2)) * 0.1
    record = model_record(rows, eta)
    lp = decoy_estimate([record], 0, SLOTS, config(intensities, rows))
    analytic = decoy_estimate([record], 0, SLOTS, config(intensities, None))
    y1, e1 = detectors.single_photon(eta, float(detectors.background_yield(P_DC)), E_DET)
    assert lp.q_mu == analytic.q_mu and lp.e_mu == analytic.e_mu  # measured parts unchanged
    assert 0 < lp.y1_lower <= y1 * (1 + 1e-3) and lp.e1_upper >= e1 * (1 - 1e-3)
    assert lp.q1 <= rows[0][1] * y1 * (1 + 1e-3)
    if kind == "wcp":
        assert lp.y1_lower == pytest.approx(analytic.y1_lower, rel=1e-3)
    if kind == "thermal":  # the Poisson formulas claim more single photons than were sent
        assert analytic.q1 > 1.3 * rows[0][1] * y1


def test_shipped_sources_scenario_and_the_estimator_checks(tmp_path):
    from emulator.scenario import ScenarioError, load_scenario

    path = Path(__file__).resolve().parents[2] / "scenarios" / "qkd-sources.toml"
    sc = load_scenario(path)
    kinds = [link.quantum.source.kind for link in sc.links]
    assert kinds == ["wcp", "spdc"] and all(a.decoy_estimator == "lp" for a in sc.apps)
    with pytest.raises(ScenarioError, match=r"apps\[0\].decoy_estimator"):
        load_scenario(path, ["apps.0.finite_key=true"])
    bad = tmp_path / "table.toml"
    bad.write_text(path.read_text().replace(
        'kind = "spdc"', 'kind = "table"'))
    with pytest.raises(ScenarioError, match=r"links\[1\].quantum.source"):
        load_scenario(bad)
