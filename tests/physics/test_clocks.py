"""Clock-network formulas: Ramsey phase, precession as a Z rotation, parity, estimator variances."""

import math

import numpy as np
import pytest

from emulator.physics import clocks
from emulator.physics import states as st


def test_ramsey_phase_and_precession_rotate_plus_state():
    phi = clocks.ramsey_phase(0.25, 0.5)
    assert phi == pytest.approx(2 * math.pi * 0.125)
    plus = st.density(np.array([1, 1]) / math.sqrt(2))
    rho = clocks.precess(plus, 0, 0.25, 0.5)
    # |0> + e^{i phi}|1>: <X> = cos phi, <Y> = sin phi
    assert st.expectation(rho, st.X, [0]) == pytest.approx(math.cos(phi))
    assert st.expectation(rho, st.Y, [0]) == pytest.approx(math.sin(phi))
    assert clocks.parity([1], [phi]) == pytest.approx(math.sin(phi))


def test_ghz_parity_matches_state_vector():
    """(|x> + |x̄>)/sqrt2 with per-qubit Z rotations: <Y X X X> = sin(sum s_i phi_i)."""
    signs = [1, -1, 1, -1]
    phases = [0.3, -0.7, 0.2, 1.1]
    x = "".join("0" if s == 1 else "1" for s in signs)
    xbar = "".join("1" if s == 1 else "0" for s in signs)
    rho = st.density((st.ket(x) + st.ket(xbar)) / math.sqrt(2))
    for q, ph in enumerate(phases):
        rho = st.apply_gate(rho, st.rz(ph), [q])
    op = st.tensor(st.Y, st.X, st.X, st.X)
    assert st.expectation(rho, op, [0, 1, 2, 3]) == pytest.approx(clocks.parity(signs, phases))
    assert clocks.combined_phase(signs, phases) == pytest.approx(0.3 + 0.7 + 0.2 - 1.1)


def test_phase_estimate_inverts_parity_and_clips():
    assert clocks.phase_estimate(math.sin(0.4)) == pytest.approx(0.4)
    assert clocks.phase_estimate(1.5) == pytest.approx(math.pi / 2)
    assert clocks.phase_estimate(0.5 * math.sin(0.4), contrast=0.5) == pytest.approx(0.4)


def test_variances_follow_the_derivation():
    t, m = 0.1, 400
    base = 1 / (m * (2 * math.pi * t) ** 2)
    assert clocks.phase_variance(m) == pytest.approx(1 / m)
    assert clocks.phase_variance(m, phi=0.9) == pytest.approx(1 / m)  # C = 1: any phase
    assert clocks.entangled_variance(m, t) == pytest.approx(base)
    assert clocks.unentangled_variance(m, t) == pytest.approx(2 * base)  # Bell: sqrt 2 in std
    for n in (3, 4):
        ent, unent = clocks.mean_variances(m, t, n)
        assert math.sqrt(unent / ent) == pytest.approx(math.sqrt(n))
        assert math.sqrt(ent) == pytest.approx(math.sqrt(base) / n)  # Heisenberg 1/N
    assert clocks.pairs_per_state(4) == 3
    assert clocks.default_signs(3) == [1, -1, 1]


def test_phase_variance_matches_sampling():
    """Monte-Carlo of the arcsin estimator from M +-1 outcomes: variance 1/M within 4 sigma."""
    rng = np.random.default_rng(3)
    m, runs, phi = 200, 4000, 0.5
    p_plus = (1 + math.sin(phi)) / 2
    plus = rng.binomial(m, p_plus, size=runs)
    est = np.arcsin(np.clip((2 * plus - m) / m, -1, 1))
    var = est.var(ddof=1)
    assert abs(var - clocks.phase_variance(m, phi)) < 4 * var * math.sqrt(2 / (runs - 1)) + 1e-4


def test_bad_arguments():
    with pytest.raises(ValueError):
        clocks.entangled_variance(10, 0.0)
    with pytest.raises(ValueError):
        clocks.combined_phase([1, 2], [0, 0])
    with pytest.raises(ValueError):
        clocks.parity([-1, 1], [0, 0])
    with pytest.raises(ValueError):
        clocks.phase_variance(0)
