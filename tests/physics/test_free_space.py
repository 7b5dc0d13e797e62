"""Free-space link: Gaussian-beam capture, pointing jitter (Monte Carlo), atmosphere."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import free_space as fs


def test_beam_radius_and_capture_limits():
    assert fs.beam_radius(1000.0, 5e-6) == pytest.approx(5.0)  # w = theta L
    assert fs.beam_radius(0.0, 5e-6, waist_m=0.1) == pytest.approx(0.1)
    assert fs.beam_radius(1000.0, 5e-6, 0.1) == pytest.approx(math.hypot(0.1, 5.0))
    assert fs.geometric_efficiency(10.0, 1.0) == pytest.approx(1.0)  # aperture >> beam
    small = fs.geometric_efficiency(0.01, 5.0)
    assert small == pytest.approx(2 * 0.01**2 / 25.0, rel=1e-5)  # 2 a^2 / w^2
    a = np.linspace(0.01, 2.0, 50)
    assert np.all(np.diff(fs.geometric_efficiency(a, 1.0)) > 0)
    # direct integration of the Gaussian intensity 2/(pi w^2) e^{-2 r^2/w^2} over the disc
    r = np.linspace(0.0, 0.7, 100_001)
    w = 1.3
    caught = np.trapezoid(2 / (math.pi * w * w) * np.exp(-2 * r * r / w / w) * 2 * math.pi * r, r)
    assert fs.geometric_efficiency(0.7, w) == pytest.approx(caught, rel=1e-9)


def test_pointing_jitter_average_against_monte_carlo():
    rng = np.random.default_rng(31)
    w, sigma, length = 6.0, 1e-6, 1200.0
    offset = rng.normal(0.0, sigma * length * 1e3, (200_000, 2))
    r2 = np.sum(offset**2, axis=1)
    collected = np.exp(-2 * r2 / w**2)  # small-aperture capture relative to a centred beam
    w_lt = fs.pointing_broadened_radius(w, sigma, length)
    expected = w**2 / w_lt**2
    se = collected.std() / math.sqrt(collected.size)
    assert abs(collected.mean() - expected) < 4 * se
    assert fs.pointing_broadened_radius(w, 0.0, length) == pytest.approx(w)


def test_atmosphere_and_link_efficiency():
    assert fs.atmospheric_transmittance(0.8, math.pi / 2) == pytest.approx(0.8)
    assert fs.atmospheric_transmittance(0.8, math.pi / 6) == pytest.approx(0.64)  # air mass 2
    eta = fs.link_efficiency(1000.0, math.pi / 2, 5e-6, 0.5, t_zenith=0.8, eta_fixed=0.5)
    assert eta == pytest.approx(-math.expm1(-2 * 0.25 / 25.0) * 0.8 * 0.5)
    assert fs.loss_db(0.001) == pytest.approx(30.0)
    # far field, small aperture: doubling the range costs 6 dB of diffraction
    near, far = (fs.loss_db(fs.link_efficiency(x, math.pi / 2, 5e-6, 0.05)) for x in (500, 1000))
    assert far - near == pytest.approx(20 * math.log10(2), abs=0.01)
