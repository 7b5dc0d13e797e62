"""Detector closed forms: bounds, monotonicity, the stated exact-vs-approximate difference."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulator.physics.channels import transmittance
from emulator.physics.detectors import (
    E0,
    background_yield,
    error_gain,
    error_gain_exact,
    gain,
    qber,
    single_photon,
)
from emulator.physics.sources import poisson_probability, signal_probability

ETA_DET = 0.1


def test_background_yield_and_gain_by_hand():
    assert float(background_yield(1e-3)) == pytest.approx(2e-3 - 1e-6)
    # Y_n = 1 - (1 - Y0)(1 - eta)^n summed with Poisson weights is the closed-form gain
    mu, eta, y0 = 0.5, 0.03, 2e-5
    series = sum(float(poisson_probability(n, mu)) * (1 - (1 - y0) * (1 - eta) ** n)
                 for n in range(40))
    assert float(gain(mu, eta, y0)) == pytest.approx(series, rel=1e-12)


def test_error_gain_is_the_poisson_sum_of_single_photon_terms():
    """Ma05's E_mu Q_mu = sum_n P(n) e_n Y_n with e_n Y_n = e0 Y0 + e_det eta_n (approximation
    Y_n ~= Y0 + eta_n, the form their eq. (9) sums)."""
    mu, eta, y0, e_det = 0.48, 0.045 * 10 ** (-0.21 * 2), 1.7e-6, 0.033
    series = sum(float(poisson_probability(n, mu)) * (E0 * y0 + e_det * (1 - (1 - eta) ** n))
                 for n in range(40))
    assert float(error_gain(mu, eta, y0, e_det)) == pytest.approx(series, rel=1e-12)
    assert float(qber(mu, eta, y0, e_det)) == pytest.approx(series / float(gain(mu, eta, y0)))
    y1, e1 = single_photon(eta, y0, e_det)
    assert float(y1) == pytest.approx(y0 + eta - y0 * eta)
    assert float(e1) == pytest.approx((y0 / 2 + e_det * eta) / float(y1))


def test_poisson_probabilities_sum_to_one():
    assert sum(float(poisson_probability(n, 0.7)) for n in range(30)) == pytest.approx(1.0)
    assert float(poisson_probability(1, 0.5)) == pytest.approx(0.5 * math.exp(-0.5))
    assert float(signal_probability(0.5, 0.2)) == pytest.approx(1 - math.exp(-0.1))


probability = st.floats(0.0, 1.0)
length = st.floats(0.0, 500.0)
mu_values = st.floats(0.0, 10.0)


@given(length, length, st.floats(0.0, 1.0), mu_values, st.floats(0.0, 0.1), probability)
def test_rates_bounded_and_monotone_in_length(l1, l2, alpha, mu, p_dc, e_det):
    short, long_ = min(l1, l2), max(l1, l2)
    eta_s, eta_l = (float(transmittance(x, alpha)) * ETA_DET for x in (short, long_))
    assert 0.0 <= eta_l <= eta_s <= 1.0
    y0 = float(background_yield(p_dc))
    q_s, q_l = float(gain(mu, eta_s, y0)), float(gain(mu, eta_l, y0))
    assert y0 <= q_l <= q_s <= 1.0
    for eta, q in ((eta_s, q_s), (eta_l, q_l)):
        eq = float(error_gain_exact(mu, eta, p_dc, e_det))
        assert 0.0 <= eq <= q + 1e-15
        # stated difference to the approximation: -(1 - e^{-eta mu}) p_dc (1/2 + e_det - p_dc/2)
        diff = float(error_gain(mu, eta, y0, e_det)) - eq
        s = float(signal_probability(mu, eta))
        assert diff == pytest.approx(s * p_dc * (0.5 + e_det - p_dc / 2), abs=1e-15)


@given(mu_values, st.floats(0.0, 1.0), st.floats(0.0, 0.1))
def test_zero_mu_gives_background_and_gain_grows_with_mu(mu, eta, p_dc):
    y0 = float(background_yield(p_dc))
    assert float(gain(0.0, eta, y0)) == pytest.approx(y0)
    assert float(gain(mu, eta, y0)) >= y0 - 1e-15
