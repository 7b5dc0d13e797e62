"""Frequency conversion stage: herald probability and true fraction against an independent
Monte Carlo of the clicks, Werner mixing against the Bell-diagonal algebra, the crossover
distance against the two heralding rates (Bock et al. 2018 figures)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import bell_diagonal as bd
from emulator.physics import conversion as qfc
from emulator.physics.heralding import heralding_probability

BOCK_EFFICIENCY = 0.265  # Bock et al., Nat. Commun. 9, 1998 (2018), 854 -> 1310 nm
BOCK_NOISE_HZ = 11.4
ALPHA_854, ALPHA_1310 = 3.0, 0.33  # dB/km in standard fibre (the scenario's table)


def test_noise_click_probability_is_poissonian() -> None:
    assert qfc.noise_click_probability(0.0, 1e-6, 0.5) == 0.0
    assert qfc.noise_click_probability(BOCK_NOISE_HZ, 1e-6, 1.0) == pytest.approx(
        BOCK_NOISE_HZ * 1e-6, rel=1e-5)
    assert qfc.noise_click_probability(1e6, 1e-6, 0.5) == pytest.approx(1 - math.exp(-0.5))


def test_noiseless_conversion_is_an_extra_efficiency() -> None:
    h = qfc.converted_heralding(20.0, ALPHA_1310, 0.9, 0.5, BOCK_EFFICIENCY, 0.0, 1e-6)
    assert h.p_herald == pytest.approx(heralding_probability(20.0, ALPHA_1310,
                                                             0.9 * BOCK_EFFICIENCY, 0.5))
    assert h.true_fraction == 1.0
    assert h.fidelity(0.97) == pytest.approx(0.97)


def test_heralding_matches_a_monte_carlo_of_the_clicks() -> None:
    """Sample photons and noise per arm and the BSM; p and the true share within 4 sigma."""
    length, eta_d, eta_bsm, eta_c, rate, gate = 10.0, 0.8, 0.5, 0.3, 5e4, 1e-6
    h = qfc.converted_heralding(length, ALPHA_1310, eta_d, eta_bsm, eta_c, rate, gate)
    rng = np.random.default_rng(11)
    n = 2_000_000
    arm_t = eta_d * 10 ** (-ALPHA_1310 * length / 2 / 10)
    signal = rng.random((2, n)) < eta_c * arm_t
    noise = rng.poisson(rate * gate * arm_t, (2, n)) > 0
    heralded = (signal | noise).all(axis=0) & (rng.random(n) < eta_bsm)
    k = int(heralded.sum())
    p_hat = k / n
    assert abs(p_hat - h.p_herald) < 4 * math.sqrt(h.p_herald * (1 - h.p_herald) / n)
    w_hat = float(signal.all(axis=0)[heralded].mean())
    assert h.true_fraction < 0.95  # the noise matters at these settings
    assert abs(w_hat - h.true_fraction) < 4 * math.sqrt(h.true_fraction
                                                        * (1 - h.true_fraction) / k)


def test_noise_heralds_mix_in_the_maximally_mixed_state() -> None:
    for f0, w in ((0.99, 0.9), (0.8, 0.5), (0.7, 0.0)):
        mixed = w * bd.werner_coefficients(f0) + (1 - w) * np.full(4, 0.25)
        assert qfc.delivered_fidelity(f0, w) == pytest.approx(mixed[0])
        np.testing.assert_allclose(bd.werner_coefficients(qfc.delivered_fidelity(f0, w)), mixed)


def test_bock_noise_barely_lowers_the_fidelity() -> None:
    """11.4 photons/s in a 1 us gate against 26.5 %: 1 - w ~ 2 (1 - s) r g / eta_c, below
    1e-4 at any distance (the noise is attenuated like the signal)."""
    for length in (5.0, 50.0):
        h = qfc.converted_heralding(length, ALPHA_1310, 0.9, 0.5, BOCK_EFFICIENCY,
                                    BOCK_NOISE_HZ, 1e-6)
        s = BOCK_EFFICIENCY * 0.9 * 10 ** (-ALPHA_1310 * length / 20)
        assert 1 - h.true_fraction == pytest.approx(
            2 * (1 - s) * BOCK_NOISE_HZ * 1e-6 / BOCK_EFFICIENCY, rel=1e-3)
        assert 1 - h.true_fraction < 1e-4


def test_crossover_equalises_the_true_herald_rates() -> None:
    x = qfc.crossover_length_km(BOCK_EFFICIENCY, ALPHA_854, ALPHA_1310)
    assert x == pytest.approx(2 * 10 * math.log10(1 / 0.265) / 2.67)  # 5.77 dB per photon
    assert x == pytest.approx(4.32, abs=0.01)

    def rates(length: float) -> tuple[float, float]:
        direct = heralding_probability(length, ALPHA_854, 0.9, 0.5)
        converted = qfc.converted_heralding(length, ALPHA_1310, 0.9, 0.5, BOCK_EFFICIENCY,
                                            BOCK_NOISE_HZ, 1e-6)
        return direct, converted.p_herald * converted.true_fraction

    direct, converted = rates(x)
    assert converted == pytest.approx(direct, rel=1e-9)
    assert rates(0.8 * x)[0] > rates(0.8 * x)[1]
    assert rates(1.2 * x)[0] < rates(1.2 * x)[1]
    assert qfc.crossover_length_km(0.5, 0.2, 0.2) == math.inf
    assert qfc.crossover_length_km(1.0, 3.0, 0.33) == 0.0
