"""BBPSSW and DEJMPS recurrences against the published numbers and their closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from emulator.physics import bell_diagonal as bd
from emulator.physics.purification import bbpssw, dejmps, dejmps_rotation, rounds

EXACT = 1e-9
SIX_DIGITS = 5e-7  # the issue quotes 6 decimals


def test_bbpssw_one_round_from_090():
    p, c = bbpssw(bd.werner_coefficients(0.9), bd.werner_coefficients(0.9))
    assert p == pytest.approx(0.875556, abs=SIX_DIGITS)
    assert c[0] == pytest.approx(0.926396, abs=SIX_DIGITS)
    f, b = 0.9, 0.1 / 3
    assert p == pytest.approx(f * f + 2 * f * b + 5 * b * b, abs=EXACT)
    assert c[0] == pytest.approx((f * f + b * b) / p, abs=EXACT)
    assert c.sum() == pytest.approx(1, abs=EXACT)


def test_dejmps_two_rounds_from_090():
    probs, c = rounds("dejmps", bd.werner_coefficients(0.9), 2)
    assert c[0] == pytest.approx(0.988764, abs=SIX_DIGITS)
    assert probs[0] == pytest.approx(0.875556, abs=SIX_DIGITS)  # round 1 equals BBPSSW's
    assert c.sum() == pytest.approx(1, abs=EXACT)


def test_dejmps_matches_closed_form_for_identical_pairs():
    rng = np.random.default_rng(0)
    a, b, c, d = rng.dirichlet(np.ones(4))
    p, out = dejmps([a, b, c, d], [a, b, c, d])
    n = (a + b) ** 2 + (c + d) ** 2
    assert p == pytest.approx(n, abs=EXACT)
    assert np.allclose(out, np.array([a * a + b * b, 2 * c * d, c * c + d * d, 2 * a * b]) / n)


def test_dejmps_rotation_swaps_psi_minus_and_phi_minus():
    assert np.array_equal(dejmps_rotation([0.7, 0.1, 0.05, 0.15]), [0.7, 0.15, 0.05, 0.1])


def test_bbpssw_needs_f_above_half_to_gain():
    """Werner inputs: F' > F iff 1/2 < F < 1 (Bennett et al. 1996)."""
    for f in (0.55, 0.7, 0.9, 0.99):
        _, c = bbpssw(bd.werner_coefficients(f), bd.werner_coefficients(f))
        assert c[0] > f
    _, c = bbpssw(bd.werner_coefficients(0.45), bd.werner_coefficients(0.45))
    assert c[0] < 0.45
