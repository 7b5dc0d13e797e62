"""Photon-number distributions against their closed forms (emulator.physics.sources)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import sources


@pytest.mark.parametrize("mu", [0.0, 0.1, 0.5, 2.0])
def test_poisson_matches_formula_and_normalises(mu):
    p = sources.poisson_distribution(mu)
    for n in range(6):
        assert p[n] == pytest.approx(math.exp(-mu) * mu**n / math.factorial(n), rel=1e-12,
                                     abs=1e-300)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert sources.mean_photon_number(p) == pytest.approx(mu, abs=1e-10)


@pytest.mark.parametrize("mu", [0.1, 0.5, 1.0])
def test_thermal_is_bose_einstein_with_g2_of_two(mu):
    p = sources.thermal_distribution(mu, cutoff=400)
    assert p[0] == pytest.approx(1 / (1 + mu)) and p[3] == pytest.approx(mu**3 / (1 + mu) ** 4)
    n = np.arange(p.size)
    mean = float(n @ p)
    assert mean == pytest.approx(mu, rel=1e-9)
    assert float(n * (n - 1) @ p) / mean**2 == pytest.approx(2.0, rel=1e-9)  # g2(0) = 2


def test_heralded_spdc_conditional_statistics():
    mu, eta_h, d_h = 0.1, 0.6, 1e-5
    p = sources.heralded_distribution(mu, eta_h, d_h, cutoff=300)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    herald = sources.herald_probability(mu, eta_h, d_h)
    assert p[0] == pytest.approx(d_h / (1 + mu) / herald)  # vacuum only via a dark herald
    ratio = (1 - (1 - eta_h) ** 2) / eta_h * mu / (1 + mu)  # P(2|h)/P(1|h), d_h -> 0
    assert p[2] / p[1] == pytest.approx(ratio, rel=1e-4)
    # sub-Poissonian at the same mean: fewer multi-photon pulses than a WCP
    poisson = sources.poisson_distribution(sources.mean_photon_number(p))
    assert p[2:].sum() < poisson[2:].sum()


def test_generating_function_click_probabilities():
    eta, y0 = 0.03, 2e-6
    mu = 0.4
    assert sources.click_probability(sources.poisson_distribution(mu), eta, y0) == pytest.approx(
        1 - (1 - y0) * math.exp(-eta * mu), rel=1e-12)
    assert sources.click_probability(sources.thermal_distribution(mu, 400), eta, y0) == (
        pytest.approx(1 - (1 - y0) / (1 + eta * mu), rel=1e-10))
    # the unlisted tail of a table always arrives: a table [0.5] (0.5 untold) keeps half
    assert sources.signal_click_probability(sources.table_distribution([0.5, 0.0]), eta) == (
        pytest.approx(0.5))


def test_table_rejects_bad_probabilities():
    with pytest.raises(ValueError):
        sources.table_distribution([0.7, 0.5])
    with pytest.raises(ValueError):
        sources.table_distribution([-0.1, 0.5])
