"""Ma05's Poisson decoy formulas applied to sources that are not Poissonian: with thermal signal
and decoys they never overestimate Y1 (proof in docs/physics.md, "Decoy formulas on a thermal
source"; checked here over a grid); with a thermal signal and Poisson decoys they do, at high
transmittance, and sampled clicks of the photon layer show it beyond 4 sigma."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import decoy, sources
from emulator.physics.detection import detect_frame
from emulator.prf import sender_choices

KEY = b"thermal-decoy"


def gain(p_n, eta, y0):
    return sources.click_probability(p_n, eta, y0)


def true_y1(eta, y0):
    return 1 - (1 - y0) * (1 - eta)


def test_poisson_formulas_never_overestimate_y1_of_a_thermal_source():
    """Thermal signal and decoys (any mu > nu > 0, transmittance, background): Y1_L <= Y1, the
    margin vanishing as nu -> 0 (the theorem's equality case)."""
    worst = -1.0
    for mu in (0.05, 0.3, 0.5, 1.0, 2.0, 4.0):
        for nu in (0.01 * mu, 0.2 * mu, 0.6 * mu, 0.95 * mu):
            for eta in (1e-4, 1e-2, 0.1, 0.3, 0.5, 0.8, 1.0):
                for y0 in (0.0, 1e-5, 1e-2):
                    q = [gain(sources.thermal_distribution(m, 600), eta, y0) for m in (mu, nu)]
                    y1_l = float(decoy.y1_lower(mu, nu, q[0], q[1], y0))
                    worst = max(worst, y1_l / true_y1(eta, y0) - 1)
    assert -1e-3 < worst <= 1e-9


@pytest.mark.parametrize("mu, nu, eta, excess", [(0.3, 0.1, 0.5, 0.025), (0.5, 0.1, 1.0, 0.035),
                                                 (0.1, 0.05, 0.1, 0.002)])
def test_thermal_signal_with_poisson_decoys_overestimates_y1(mu, nu, eta, excess):
    """A thermal signal (g2 = 2) with Poisson decoys: at high transmittance the Poisson
    formulas claim a single-photon yield above the channel's true Y1 = 1 - (1 - Y0)(1 - eta)."""
    y0 = 1e-6
    q_mu = gain(sources.thermal_distribution(mu), eta, y0)
    q_nu = gain(sources.poisson_distribution(nu), eta, y0)
    assert float(decoy.y1_lower(mu, nu, q_mu, q_nu, y0)) > (1 + excess) * true_y1(eta, y0)
    poisson = gain(sources.poisson_distribution(mu), eta, y0)  # the same formulas hold for WCP
    assert float(decoy.y1_lower(mu, nu, poisson, q_nu, y0)) < true_y1(eta, y0)


def test_sampled_clicks_show_the_overestimate_beyond_four_sigma():
    """2e7 slots of the photon layer at eta = 0.5 (short fibre, a 0.8-efficient detector):
    thermal mu = 0.3 (p = 0.5), Poisson nu = 0.1 and vacuum (0.25 each). Y1_L from the measured
    gains, its sigma from the binomial counts; the excess is ~0.015 against sigma ~0.0016."""
    n, eta, p_dc = 20_000_000, 0.5, 1e-6
    y0 = 1 - (1 - p_dc) ** 2
    rows = [sources.thermal_distribution(0.3), sources.poisson_distribution(0.1),
            sources.poisson_distribution(0.0)]
    probabilities = [0.5, 0.25, 0.25]
    # the sampler's Poisson mean with each row's click probability (as the daemon does)
    mus = [-math.log1p(-sources.signal_click_probability(p, eta)) / eta for p in rows]
    rng = np.random.default_rng(21)
    pulses, clicks = np.zeros(3), np.zeros(3)
    for s in range(0, n, 1_000_000):
        found = detect_frame(rng, KEY, s, s + 1_000_000, mus, probabilities, eta, p_dc, 0.01)
        clicks += np.bincount(sender_choices(KEY, found.slot, probabilities)[2], minlength=3)
        every = np.arange(s, s + 1_000_000, dtype=np.uint64)
        pulses += np.bincount(sender_choices(KEY, every, probabilities)[2], minlength=3)
    q = clicks / pulses
    model = [gain(p, eta, y0) for p in rows]
    assert np.all(np.abs(q - model) <= 4 * np.sqrt(np.multiply(model, 1 - np.array(model))
                                                  / pulses))
    mu, nu = 0.3, 0.1
    y1_l = float(decoy.y1_lower(mu, nu, q[0], q[1], q[2]))
    a = mu / (mu * nu - nu * nu)
    weights = a * np.array([math.exp(mu) * nu**2 / mu**2, math.exp(nu), (mu**2 - nu**2) / mu**2])
    sigma = math.sqrt(float(np.sum((weights**2) * q * (1 - q) / pulses)))
    assert y1_l - true_y1(eta, y0) > 4 * sigma
