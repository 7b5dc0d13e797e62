"""LP decoy bounds (emulator.physics.decoy_lp) against Ma05 and the true yields of a source."""

from __future__ import annotations

import numpy as np
import pytest

from emulator.physics import channels, decoy, decoy_lp, detectors, sources

P_DC, E_DET = 1e-6, 0.015
Y0 = float(detectors.background_yield(P_DC))


def channel_counts(rows, eta):
    """Model gains and error gains of each intensity's P(n) (the ground truth, test only)."""
    q = [sources.click_probability(p, eta, Y0) for p in rows]
    eq = [sources.error_click_probability(p, eta, Y0, E_DET) for p in rows]
    return q, eq


def eta_at(km):
    return float(channels.transmittance(km, 0.2)) * 0.1


@pytest.mark.parametrize("km", [0, 25, 50, 100])
def test_poisson_lp_equals_vacuum_weak_bound(km):
    eta, mu, nu = eta_at(km), 0.5, 0.1
    rows = [sources.poisson_distribution(m) for m in (mu, nu, 0.0)]
    q, eq = channel_counts(rows, eta)
    lp = decoy_lp.bounds(rows, q, eq)
    y1 = float(decoy.y1_lower(mu, nu, q[0], q[1], q[2]))
    e1 = float(decoy.e1_upper(nu, q[1], eq[1] / q[1], y1, q[2]))
    assert lp.feasible
    assert lp.y1_lower == pytest.approx(y1, rel=1e-3)
    # the LP also uses H_n <= Y_n and the measured vacuum error: e1 at most Ma05's
    assert lp.e1_upper <= e1 * (1 + 1e-9)
    assert lp.q1 == pytest.approx(float(decoy.q1_lower(mu, y1)), rel=1e-3)


def _true_single_photon(eta):
    return detectors.single_photon(eta, Y0, E_DET)


@pytest.mark.parametrize("km", [0, 50, 100])
@pytest.mark.parametrize("source", ["thermal", "spdc"])
def test_non_poisson_bounds_hold_and_key_is_secure(km, source):
    eta = eta_at(km)
    if source == "thermal":
        rows = [sources.thermal_distribution(m) for m in (0.5, 0.1, 0.0)]
    else:
        rows = [sources.heralded_distribution(m, 0.6, 1e-6) for m in (0.1, 0.02)]
        rows.append(sources.poisson_distribution(0.0))
    q, eq = channel_counts(rows, eta)
    lp = decoy_lp.bounds(rows, q, eq)
    y1, e1 = _true_single_photon(eta)
    assert lp.feasible and 0 < lp.y1_lower <= y1 and lp.e1_upper >= e1
    # key from the bounds never exceeds the key from the true single-photon parameters
    e_mu = eq[0] / q[0]
    r_lp = decoy.gllp_key_rate(q[0], e_mu, lp.q1, lp.e1_upper, 1.16)
    r_true = decoy.gllp_key_rate(q[0], e_mu, rows[0][1] * y1, e1, 1.16)
    assert 0 < r_lp <= r_true


@pytest.mark.parametrize("km", [0, 50])
def test_poisson_formulas_on_a_thermal_source_overclaim(km):
    """Ma05 on thermal gains: its Q1 = Y1_L mu e^-mu overestimates the true single-photon
    gain P_th(1) Y1 (by ~1/3 at mu = 0.5), so the claimed key exceeds what is secure. (Y1_L
    itself comes out below the true Y1 here; the overclaim is in the Poisson P(1) it assumes.)"""
    eta, mu, nu = eta_at(km), 0.5, 0.1
    rows = [sources.thermal_distribution(m) for m in (mu, nu, 0.0)]
    q, eq = channel_counts(rows, eta)
    y1_l = float(decoy.y1_lower(mu, nu, q[0], q[1], q[2]))
    e1_u = float(decoy.e1_upper(nu, q[1], eq[1] / q[1], y1_l, q[2]))
    y1, e1 = _true_single_photon(eta)
    true_q1 = rows[0][1] * y1
    assert float(decoy.q1_lower(mu, y1_l)) > 1.3 * true_q1
    claimed = decoy.gllp_key_rate(q[0], eq[0] / q[0], decoy.q1_lower(mu, y1_l), e1_u, 1.16)
    secure = decoy.gllp_key_rate(q[0], eq[0] / q[0], true_q1, e1, 1.16)
    assert claimed > 1.3 * secure
    # the LP with the thermal P(n) does not overclaim
    lp = decoy_lp.bounds(rows, q, eq)
    assert lp.q1 <= true_q1


def test_tail_is_worst_case_not_ignored():
    """A cut-off below the mass of the distribution widens the bound, never breaks it."""
    eta = eta_at(10)
    rows = [sources.thermal_distribution(m) for m in (1.5, 0.3, 0.0)]
    q, eq = channel_counts(rows, eta)
    y1, _ = _true_single_photon(eta)
    wide = decoy_lp.bounds(rows, q, eq, cutoff=3)
    tight = decoy_lp.bounds(rows, q, eq, cutoff=20)
    assert wide.y1_lower <= tight.y1_lower + 1e-12 <= y1 + 1e-12


def test_inconsistent_counts_are_infeasible():
    rows = [sources.poisson_distribution(m) for m in (0.5, 0.1, 0.0)]
    lp = decoy_lp.bounds(rows, [0.01, 0.5, 0.0], [0.0, 0.0, 0.0])  # decoy brighter than signal
    assert not lp.feasible and lp.y1_lower == 0.0 and lp.e1_upper == 0.5


def test_measured_rows_must_match():
    with pytest.raises(ValueError):
        decoy_lp.bounds([[1.0]], [0.1, 0.2], [0.0, 0.0])
    with pytest.raises(ValueError):
        decoy_lp.bounds([[1.0]], [0.1], [0.0], cutoff=0)
    assert np.isfinite(decoy_lp.bounds([[1.0, 0.0]], [1e-6], [5e-7]).e1_upper)
