"""Decoy-state bounds and key-length formulas against hand-computed values and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics.channels import transmittance
from emulator.physics.decoy import (
    e1_upper,
    entangled_key_length,
    estimate,
    gllp_key_rate,
    gllp_rate,
    plob_bound,
    q1_lower,
    secret_key_length,
    y1_lower,
)
from emulator.physics.detectors import error_gain, gain, qber, single_photon
from emulator.physics.entropy import binary_entropy

# GYS parameters used by Ma05 (their table I): 0.21 dB/km, eta_Bob 4.5%, Y0 1.7e-6, e_det 3.3%.
ALPHA, ETA_BOB, Y0, E_DET, F = 0.21, 0.045, 1.7e-6, 0.033, 1.22
MU, NU = 0.48, 0.05


def channel_eta(length_km, alpha=ALPHA, detector_efficiency=1.0):
    """Total efficiency: fibre transmittance times the receiver's detector efficiency."""
    return detector_efficiency * transmittance(length_km, alpha)


def test_y1_e1_against_plain_math():
    # Numbers typed in independently of the module, formula of Ma05 eqs. (34) and (37).
    mu, nu, q_mu, q_nu, y0, e_nu = 0.5, 0.1, 2.3e-3, 4.8e-4, 1e-5, 0.021
    expected_y1 = (mu / (mu * nu - nu**2)) * (
        q_nu * math.exp(nu) - q_mu * math.exp(mu) * nu**2 / mu**2 - (mu**2 - nu**2) / mu**2 * y0
    )
    assert y1_lower(mu, nu, q_mu, q_nu, y0) == pytest.approx(expected_y1, rel=1e-12)
    expected_e1 = (e_nu * q_nu * math.exp(nu) - y0 / 2) / (expected_y1 * nu)
    assert float(e1_upper(nu, q_nu, e_nu, expected_y1, y0)) == pytest.approx(expected_e1, rel=1e-12)
    assert float(q1_lower(mu, expected_y1)) == pytest.approx(expected_y1 * mu * math.exp(-mu))


def test_channel_model_matches_ma05():
    eta = 0.01
    assert float(gain(MU, eta, Y0)) == pytest.approx(1 - (1 - Y0) * math.exp(-eta * MU))
    eq = Y0 / 2 + E_DET * (1 - math.exp(-eta * MU))
    assert float(error_gain(MU, eta, Y0, E_DET)) == pytest.approx(eq)
    assert float(qber(MU, eta, Y0, E_DET)) == pytest.approx(eq / float(gain(MU, eta, Y0)))


@pytest.mark.parametrize("mu,nu", [(0.48, 0.05), (0.5, 0.1), (0.6, 0.2)])
def test_bounds_are_bounds(mu, nu):
    eta = channel_eta(np.linspace(0, 150, 31), ALPHA, ETA_BOB)
    q_mu, q_nu = gain(mu, eta, Y0), gain(nu, eta, Y0)
    y1_l = y1_lower(mu, nu, q_mu, q_nu, Y0)
    y1, e1 = single_photon(eta, Y0, E_DET)
    assert np.all(y1_l <= y1 * (1 + 1e-12))
    assert np.allclose(y1, Y0 + eta - Y0 * eta)
    e1_u = e1_upper(nu, q_nu, qber(nu, eta, Y0, E_DET), y1_l, Y0)
    assert np.all(e1_u >= e1 * (1 - 1e-12))
    # the bound tightens as nu -> 0 (Ma05 sec. IV): smaller nu, larger Y1_L
    y1_small_nu = y1_lower(mu, nu / 4, q_mu, gain(nu / 4, eta, Y0), Y0)
    assert np.all(y1_small_nu >= y1_l)


def test_rate_decreases_with_distance_and_has_cutoff():
    km = np.arange(0, 200, 5.0)
    rate = gllp_rate(MU, NU, channel_eta(km, ALPHA, ETA_BOB), Y0, E_DET, F)
    positive = rate > 0
    assert positive[0] and not positive[-1]
    assert np.all(np.diff(rate[positive]) < 0)
    cutoff = km[positive][-1]
    assert 120 <= cutoff <= 150  # Ma05 fig. 3: ~140 km for GYS with vacuum + weak decoy
    assert np.all(rate[km > cutoff] == 0)
    # below the infinite-decoy rate and below the repeaterless bound of the fibre alone
    infinite = gllp_rate(
        MU, NU, channel_eta(km, ALPHA, ETA_BOB), Y0, E_DET, F, decoy="infinite"
    )
    assert np.all(rate <= infinite + 1e-18)
    assert np.all(rate[1:] < plob_bound(channel_eta(km[1:], ALPHA)))


def test_plob_bound():
    assert float(plob_bound(0.5)) == pytest.approx(1.0)
    assert float(plob_bound(1e-3)) == pytest.approx(1e-3 / math.log(2), rel=1e-3)


def test_gllp_key_rate_formula():
    q_mu, e_mu, q1, e1 = 1e-3, 0.03, 4e-4, 0.04
    expected = 0.5 * (-q_mu * 1.1 * binary_entropy(e_mu) + q1 * (1 - binary_entropy(e1)))
    assert float(gllp_key_rate(q_mu, e_mu, q1, e1, 1.1)) == pytest.approx(float(expected))
    assert float(gllp_key_rate(q_mu, 0.2, q1, 0.3, 1.1)) == 0.0


def test_estimate_from_counts_recovers_model_bounds():
    eta = float(channel_eta(25, 0.2, 0.1))
    y0, e_det = 1e-5, 0.01
    sent = (10**12, 10**12, 10**12)  # so large that rounding counts does not matter
    det = tuple(round(s * float(gain(m, eta, y0))) for s, m in zip(sent, (0.5, 0.1, 0.0)))
    err = tuple(round(d * float(qber(m, eta, y0, e_det))) for d, m in zip(det, (0.5, 0.1, 0.0)))
    est = estimate(0.5, 0.1, sent, det, err)
    q_mu, q_nu = gain(0.5, eta, y0), gain(0.1, eta, y0)
    assert est.y1_lower == pytest.approx(float(y1_lower(0.5, 0.1, q_mu, q_nu, y0)), rel=1e-5)
    assert est.y0 == pytest.approx(y0, rel=1e-5)
    assert est.q1 == pytest.approx(est.y1_lower * 0.5 * math.exp(-0.5))


def test_secret_key_length_hand_computed():
    n, q_mu, q1, e1, leak = 100_000, 2e-3, 1.2e-3, 0.02, 15_000
    single = n * q1 / q_mu * (1 - (-e1 * math.log2(e1) - (1 - e1) * math.log2(1 - e1)))
    expected = math.floor(single - leak - 122 - 256 - 2 * math.log2(1e10))
    assert secret_key_length(n, q_mu, q1, e1, leak, 122, 256, 1e-10) == expected
    assert secret_key_length(n, q_mu, q1, 0.25, leak) == 0  # negative -> nothing


def test_gys_cutoff_distances_against_ma05():
    """Ma05 with the GYS data (mu = 0.48, f = 1.22): the infinite-decoy GLLP rate ends at about
    142 km, and the vacuum + weak protocol (nu = 0.05) "asymptotically approaches" it (their
    abstract): its cut-off lies within a few km of the infinite-decoy one."""
    km = np.arange(100.0, 160.0, 0.1)
    eta = channel_eta(km, ALPHA, ETA_BOB)
    infinite = gllp_rate(MU, NU, eta, Y0, E_DET, F, decoy="infinite")
    weak = gllp_rate(MU, NU, eta, Y0, E_DET, F)
    cut_inf, cut_weak = km[infinite > 0][-1], km[weak > 0][-1]
    assert 141.0 <= cut_inf <= 143.0
    assert cut_inf - 3.0 <= cut_weak <= cut_inf


def test_entangled_key_length_hand_computed():
    n, e, leak = 200_000, 0.03, 40_000
    h = -e * math.log2(e) - (1 - e) * math.log2(1 - e)
    expected = math.floor(n * (1 - h) - leak - 122 - 2 * math.log2(1e10))
    assert entangled_key_length(n, e, leak, 122, 1e-10) == expected
    assert entangled_key_length(n, 0.25, leak) == 0  # n (1 - H2) = 37_750 < leak
