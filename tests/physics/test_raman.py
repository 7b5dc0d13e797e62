"""Raman noise (Eraerds et al. 2010): closed forms against direct integration and their limits,
photon counting, and the QBER rise of BB84 sampled by ``detect_frame`` within 4 sigma."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import raman
from emulator.physics import states as st
from emulator.physics.channels import transmittance
from emulator.physics.detection import detect_frame
from emulator.physics.detectors import error_gain_exact, gain
from emulator.prf import sender_choices

P_IN, RHO, DL = 1e-3, 3e-9, 0.8  # W, 1/(km nm), nm (illustrative values)


def test_attenuation_conversion_matches_channels():
    assert raman.attenuation_per_km(0.2) == pytest.approx(0.2 * math.log(10) / 10)
    for length in (1.0, 25.0, 80.0):
        assert math.exp(-raman.attenuation_per_km(0.2) * length) == pytest.approx(
            float(transmittance(length, 0.2)), rel=1e-12)


@pytest.mark.parametrize("length", [0.5, 10.0, 50.0])
def test_closed_forms_equal_the_integral_over_the_fibre(length):
    """Scattering at z: pump P_in e^{-alpha z}; forward light then loses e^{-alpha (L-z)},
    backward light e^{-alpha z} on its way back."""
    alpha = raman.attenuation_per_km(0.2)
    z = np.linspace(0.0, length, 200_001)
    fwd = np.trapezoid(P_IN * np.exp(-alpha * z) * RHO * DL * np.exp(-alpha * (length - z)), z)
    bwd = np.trapezoid(P_IN * np.exp(-alpha * z) * RHO * DL * np.exp(-alpha * z), z)
    assert raman.forward_power(P_IN, RHO, DL, length, 0.2) == pytest.approx(fwd, rel=1e-9)
    assert raman.backward_power(P_IN, RHO, DL, length, 0.2) == pytest.approx(bwd, rel=1e-9)
    # the paper's form with P_out and sinh
    p_out = P_IN * math.exp(-alpha * length)
    assert raman.backward_power(P_IN, RHO, DL, length, 0.2) == pytest.approx(
        p_out * RHO * DL * math.sinh(alpha * length) / alpha, rel=1e-12)


def test_limits_short_fibre_and_lossless_fibre():
    for f in (raman.forward_power, raman.backward_power):
        assert f(P_IN, RHO, DL, 0.0, 0.2) == 0.0
        # L -> 0: P ~ P_in rho dlambda L
        assert f(P_IN, RHO, DL, 1e-6, 0.2) == pytest.approx(P_IN * RHO * DL * 1e-6, rel=1e-6)
        # alpha -> 0 (and exactly 0): P = P_in rho dlambda L
        assert f(P_IN, RHO, DL, 30.0, 1e-12) == pytest.approx(P_IN * RHO * DL * 30, rel=1e-9)
        assert f(P_IN, RHO, DL, 30.0, 0.0) == pytest.approx(P_IN * RHO * DL * 30, rel=1e-12)


def test_monotonicity_and_extremes_in_length():
    alpha = raman.attenuation_per_km(0.2)
    lengths = np.linspace(0.0, 200.0, 2001)
    bwd = raman.backward_power(P_IN, RHO, DL, lengths, 0.2)
    fwd = raman.forward_power(P_IN, RHO, DL, lengths, 0.2)
    assert np.all(np.diff(bwd) > 0)
    assert bwd[-1] < P_IN * RHO * DL / (2 * alpha)  # saturates at P_in rho dlambda/(2 alpha)
    assert bwd[-1] == pytest.approx(P_IN * RHO * DL / (2 * alpha), rel=1e-3)
    # forward noise L e^{-alpha L} peaks at L = 1/alpha (21.7 km at 0.2 dB/km)
    assert lengths[np.argmax(fwd)] == pytest.approx(1 / alpha, abs=0.1)
    assert np.all(bwd[1:] > fwd[1:])  # backward noise always exceeds forward
    assert np.all(np.diff(raman.noise_photons(P_IN, 0.0, RHO, DL, 10.0, 0.2, 1550, 1e-9, 0.1,
                                              np.linspace(0, 1, 11))) > 0)


def test_photons_per_gate_and_click_probabilities():
    # 1 pW at 1550 nm: lambda/(h c) = 7.80e18 photons/J -> 7.80e6 photons/s
    assert raman.photons_per_gate(1e-12, 1550.0, 1.0, 1.0) == pytest.approx(7.8029e6, rel=1e-4)
    assert raman.photons_per_gate(1e-12, 1550.0, 1e-9, 0.1) == pytest.approx(7.8029e-4, rel=1e-4)
    assert raman.click_probability(0.0) == 0.0
    assert raman.click_probability(1e-6) == pytest.approx(5e-7, rel=1e-6)
    assert raman.effective_dark_count(1e-6, 0.0) == pytest.approx(1e-6)
    assert raman.effective_dark_count(0.0, 0.2) == pytest.approx(1 - math.exp(-0.1))


def test_qber_rises_with_load_from_the_dark_baseline():
    mu, eta, p_dc, e_det = 0.5, 0.01, 1e-6, 0.015
    baseline = error_gain_exact(mu, eta, p_dc, e_det) / gain(mu, eta, 1 - (1 - p_dc) ** 2)
    assert raman.bb84_qber(mu, eta, p_dc, e_det, 0.0) == pytest.approx(baseline, rel=1e-12)
    loads = np.linspace(0.0, 1.0, 6)
    n = raman.noise_photons(P_IN, P_IN, RHO, DL, 25.0, 0.2, 1550, 1e-9, 0.1, loads)
    q = raman.bb84_qber(mu, eta, p_dc, e_det, n)
    assert np.all(np.diff(q) > 0) and q[-1] < 0.5
    assert raman.bb84_qber(mu, eta, p_dc, e_det, 50.0) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("n_noise", [2e-4, 1e-3])
def test_sampled_qber_follows_the_model_at_two_loads(n_noise):
    """The daemon's sampler with the effective dark count gives the Raman QBER."""
    rng = np.random.default_rng(11)
    key, pulses, mu, eta, p_dc, e_det = b"raman-link", 4_000_000, 0.5, 0.01, 1e-6, 0.015
    p_eff = float(raman.effective_dark_count(p_dc, n_noise))
    det = detect_frame(rng, key, 0, pulses, [mu], [1.0], eta, p_eff, e_det)
    bit, basis, _ = sender_choices(key, det.slot, [1.0])
    matched = det.basis == basis
    errors = det.outcome[matched] != bit[matched]
    expected = float(raman.bb84_qber(mu, eta, p_dc, e_det, n_noise))
    sigma = math.sqrt(expected * (1 - expected) / errors.size)
    assert abs(errors.mean() - expected) < 4 * sigma, (errors.mean(), expected, sigma)


def test_depolarising_probability_reproduces_the_double_click_statistics():
    n = 0.3
    p = float(raman.depolarising_probability(n))
    # depolarising with p flips a measured basis state with probability p/2, in every basis
    for label, basis in (("0", "Z"), ("+", "X"), ("r", "Y")):
        rho = st.depolarize(st.density(st.ket(label)), 0, p)
        assert st.outcome_probabilities(rho, 0, basis)[1] == pytest.approx(p / 2, abs=1e-12)
    # detection: the signal clicks its detector; Poisson(n/2) noise in each; double -> coin
    rng = np.random.default_rng(12)
    m = 200_000
    other = rng.poisson(n / 2, m) > 0
    flips = other & (rng.random(m) < 0.5)
    sigma = math.sqrt(p / 2 * (1 - p / 2) / m)
    assert abs(flips.mean() - p / 2) < 4 * sigma


def test_duty_cycle_from_measured_traffic():
    assert raman.duty_cycle(125_000, 1.0, 1e9) == pytest.approx(1e-3)  # 1 Mbit/s on 1 Gbit/s
    assert raman.duty_cycle(1e12, 1.0, 1e9) == 1.0
    with pytest.raises(ValueError):
        raman.duty_cycle(10, 0.0, 1e9)
