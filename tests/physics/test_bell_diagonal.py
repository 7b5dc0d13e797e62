"""Bell-diagonal fast path against the density-matrix engine; Werner swap, chain and CHSH.

Exact results within 1e-9; sampled ones within 4 standard errors from the sample size.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import bell_diagonal as bd
from emulator.physics import states as st

EXACT = 1e-9


def _random_bell_diagonal(rng: np.random.Generator) -> np.ndarray:
    return rng.dirichlet(np.ones(4))


# --- Bell-diagonal fast path against the density-matrix path --------------------------------


def test_bell_diagonal_round_trip_and_werner():
    rng = np.random.default_rng(3)
    c = _random_bell_diagonal(rng)
    assert np.allclose(st.from_density(st.to_density(c)), c)
    assert np.allclose(st.from_density(st.werner(0.8)), [0.8, 0.2 / 3, 0.2 / 3, 0.2 / 3])
    assert st.fidelity(st.werner(0.8), st.bell_state(0)) == pytest.approx(0.8)


def test_bell_diagonal_channels_match_density_path():
    rng = np.random.default_rng(4)
    for _ in range(5):
        c = _random_bell_diagonal(rng)
        p = rng.random()
        rho = st.to_density(c)
        for q in (0, 1):
            assert np.allclose(st.from_density(st.depolarize(rho, q, p)),
                               bd.depolarize(c, p))
            assert np.allclose(st.from_density(st.dephase(rho, q, p)),
                               bd.dephase(c, p))
            for k, name in enumerate(bd.BELL_PAULI):
                assert np.allclose(st.from_density(st.apply_gate(rho, st.PAULIS[name], [q])),
                                   bd.pauli(c, k))
        # the channels keep Bell-diagonal states Bell-diagonal
        assert np.allclose(st.to_density(bd.dephase(c, p)), st.dephase(rho, 1, p))


def test_bsm_identifies_bell_states():
    for k in range(4):
        branches = st.bell_measure_branches(st.density(st.bell_state(k)), 0, 1)
        probs = {(m1, m2): p for m1, m2, p, _ in branches}
        assert probs[bd.bell_outcome(k)] == pytest.approx(1)
        assert bd.bell_index(*bd.bell_outcome(k)) == k


def _swap_branches(c1, c2):
    """Density path: qubits (a, b1, b2, c), BSM on (b1, b2), correction on c."""
    rho = st.tensor(st.to_density(c1), st.to_density(c2))
    for m1, m2, p, post in st.bell_measure_branches(rho, 1, 2):
        yield m1, m2, p, post, st.apply_gate(post, st.pauli_correction(m1, m2), [1])


def test_swap_of_werner_pairs_density_path_and_fast_path():
    f1 = f2 = 0.9
    expected = f1 * f2 + (1 - f1) * (1 - f2) / 3
    assert expected == pytest.approx(0.813333, abs=5e-7)
    avg = np.zeros((4, 4), dtype=complex)
    for m1, m2, p, _post, corrected in _swap_branches(bd.werner_coefficients(f1),
                                                        bd.werner_coefficients(f2)):
        assert p == pytest.approx(0.25)
        avg += p * corrected
    assert st.fidelity(avg, st.bell_state(0)) == pytest.approx(expected, abs=EXACT)
    fast = bd.swap(bd.werner_coefficients(f1), bd.werner_coefficients(f2))
    assert fast[0] == pytest.approx(expected, abs=EXACT)


def test_swap_of_general_bell_diagonal_pairs_every_outcome():
    rng = np.random.default_rng(5)
    for _ in range(3):
        c1, c2 = _random_bell_diagonal(rng), _random_bell_diagonal(rng)
        fast = bd.swap(c1, c2)
        for m1, m2, p, post, corrected in _swap_branches(c1, c2):
            assert p == pytest.approx(0.25)
            assert np.allclose(corrected, st.to_density(fast))
            assert np.allclose(post, st.to_density(bd.swap_outcome(c1, c2, m1, m2)))


def test_werner_swap_published_value_and_chain_closed_form():
    assert bd.werner_swap(0.9, 0.9) == pytest.approx(0.813333, abs=5e-7)
    # Werner parameter lam = (4F-1)/3 multiplies under swapping: F_n = 1/4 + 3/4 lam^n
    for f, n in ((0.9, 2), (0.95, 4), (0.99, 10)):
        lam = (4 * f - 1) / 3
        assert bd.werner_chain([f] * n) == pytest.approx(0.25 + 0.75 * lam**n, abs=EXACT)
    fs = [0.97, 0.9, 0.85]
    assert bd.werner_chain(fs) == pytest.approx(
        bd.swap(bd.swap(bd.werner_coefficients(fs[0]), bd.werner_coefficients(fs[1])),
                bd.werner_coefficients(fs[2]))[0], abs=EXACT)
    with pytest.raises(ValueError):
        bd.werner_chain([])


# --- CHSH: S computed from the Werner density matrix's expectation values ------------------

CHSH_ANGLES_A = (0.0, math.pi / 2)  # Z, X
CHSH_ANGLES_B = (math.pi / 4, -math.pi / 4)  # (Z+X)/sqrt2, (Z-X)/sqrt2
CHSH_SIGNS = {(0, 0): 1, (0, 1): 1, (1, 0): 1, (1, 1): -1}


def _axis(theta):
    return math.cos(theta) * st.Z + math.sin(theta) * st.X


def test_chsh_exact_for_werner_states():
    for f in (1.0, 0.9, 0.6):
        rho = st.werner(f)
        s = sum(sign * st.expectation(rho, np.kron(_axis(CHSH_ANGLES_A[i]),
                                                    _axis(CHSH_ANGLES_B[j])), [0, 1])
                for (i, j), sign in CHSH_SIGNS.items())
        assert s == pytest.approx(bd.werner_chsh(f), abs=EXACT)


def test_chsh_sampled_within_four_sigma():
    rng = np.random.default_rng(7)
    f, n = 0.9, 1500
    rho = st.werner(f)
    e_exact = bd.werner_chsh(f) / 4  # each |E| is S/4 for these settings
    s_hat, var = 0.0, 0.0
    for (i, j), sign in CHSH_SIGNS.items():
        # measuring cos t Z + sin t X == rotate by ry(-t), then measure Z
        r = st.apply_gate(st.apply_gate(rho, st.ry(-CHSH_ANGLES_A[i]), [0]),
                          st.ry(-CHSH_ANGLES_B[j]), [1])
        products = 0
        for _ in range(n):
            a, post = st.measure(r, 0, "Z", rng)
            b, _ = st.measure(post, 1, "Z", rng)
            products += 1 - 2 * (a ^ b)
        s_hat += sign * products / n
        var += (1 - e_exact**2) / n
    s_exact = bd.werner_chsh(f)
    assert abs(s_hat - s_exact) < 4 * math.sqrt(var)


def test_chsh_violation_threshold():
    assert bd.werner_chsh((1 + 3 / math.sqrt(2)) / 4) == pytest.approx(2.0, abs=EXACT)
    assert bd.werner_chsh(1.0) == pytest.approx(2 * math.sqrt(2))
