"""State engine against hand-computed states and the entanglement formulas of issue 4.

Exact results are compared with float tolerance (1e-9); sampled ones within 4 standard errors
derived from the sample size.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import bell_diagonal as bd
from emulator.physics import memories
from emulator.physics import states as st

EXACT = 1e-9


def _random_bell_diagonal(rng: np.random.Generator) -> np.ndarray:
    return rng.dirichlet(np.ones(4))


# --- registers and gates ----------------------------------------------------------------------


def test_qubit_order_is_big_endian():
    assert np.argmax(np.abs(st.ket("10"))) == 2
    rho = st.apply_gate(st.density(st.ket("00")), st.X, [0])
    assert st.fidelity(rho, st.ket("10")) == pytest.approx(1, abs=EXACT)


def test_cnot_targets_order():
    assert st.fidelity(st.apply_gate(st.density(st.ket("10")), st.CNOT, [0, 1]),
                       st.ket("11")) == pytest.approx(1, abs=EXACT)
    # control on qubit 1
    assert st.fidelity(st.apply_gate(st.density(st.ket("01")), st.CNOT, [1, 0]),
                       st.ket("11")) == pytest.approx(1, abs=EXACT)
    # 3 qubits, non-adjacent targets: control 2, target 0 on |001> -> |101>
    rho = st.apply_gate(st.density(st.ket("001")), st.CNOT, [2, 0])
    assert st.fidelity(rho, st.ket("101")) == pytest.approx(1, abs=EXACT)


def test_cz_and_s_gates():
    rho = st.apply_gate(st.density(st.ket("++")), st.CZ, [0, 1])
    psi = np.array([1, 1, 1, -1]) / 2
    assert st.fidelity(rho, psi) == pytest.approx(1, abs=EXACT)
    rho = st.apply_gate(st.density(st.ket("+")), st.S, [0])
    assert st.fidelity(rho, st.ket("r")) == pytest.approx(1, abs=EXACT)


def test_bell_states_from_circuit_and_pauli_convention():
    # H(0) CNOT(0,1) on |ab> gives: 00 Phi+, 10 Phi-, 01 Psi+, 11 Psi- (up to phase)
    expected = {"00": 0, "10": 3, "01": 2, "11": 1}
    for bits, k in expected.items():
        rho = st.density(st.ket(bits))
        rho = st.apply_gate(st.apply_gate(rho, st.H, [0]), st.CNOT, [0, 1])
        assert st.fidelity(rho, st.bell_state(k)) == pytest.approx(1, abs=EXACT)
    phi = st.density(st.bell_state(0))
    for k, name in enumerate(bd.BELL_PAULI):
        for q in (0, 1):
            rho = st.apply_gate(phi, st.PAULIS[name], [q])
            assert st.fidelity(rho, st.bell_state(k)) == pytest.approx(1, abs=EXACT)


def test_ptrace_and_permute():
    rho = st.density(st.bell_state(0))
    assert np.allclose(st.ptrace(rho, [1]), np.eye(2) / 2)
    prod = st.tensor(st.density(st.ket("0")), st.density(st.ket("+")), st.density(st.ket("1")))
    assert np.allclose(st.ptrace(prod, [0, 2]), st.density(st.ket("01")))
    assert np.allclose(st.ptrace(prod, [1]), st.density(st.ket("+")))
    assert np.allclose(st.permute(prod, [2, 0, 1]), st.density(st.ket("10+")))


def test_rotations():
    theta = 0.7
    rho = st.apply_gate(st.density(st.ket("0")), st.ry(theta), [0])
    # Bloch vector (sin t, 0, cos t)
    assert st.expectation(rho, st.Z, [0]) == pytest.approx(math.cos(theta), abs=EXACT)
    assert st.expectation(rho, st.X, [0]) == pytest.approx(math.sin(theta), abs=EXACT)
    assert np.allclose(st.rx(math.pi), -1j * st.X)
    assert np.allclose(st.rz(math.pi / 2) * np.exp(1j * math.pi / 4), st.S)


def test_expectation_respects_target_order():
    rho = st.density(st.ket("01"))
    zi = st.tensor(st.Z, st.I2)
    assert st.expectation(rho, zi, [0, 1]) == pytest.approx(1)
    assert st.expectation(rho, zi, [1, 0]) == pytest.approx(-1)


# --- measurement -----------------------------------------------------------------------------


def test_measure_born_probabilities_exact():
    theta = 1.1
    rho = st.apply_gate(st.density(st.ket("0")), st.ry(theta), [0])
    assert st.outcome_probabilities(rho, 0, "Z")[0] == pytest.approx(math.cos(theta / 2) ** 2)
    assert st.outcome_probabilities(rho, 0, "X")[0] == pytest.approx((1 + math.sin(theta)) / 2)
    assert st.outcome_probabilities(st.density(st.ket("r")), 0, "Y")[0] == pytest.approx(1)
    assert st.outcome_probabilities(st.density(st.ket("l")), 0, "Y")[0] == pytest.approx(0)


def test_measure_sampled_within_four_sigma_and_collapses():
    rng = np.random.default_rng(1)
    theta, n = 1.1, 2000
    rho = st.tensor(st.apply_gate(st.density(st.ket("0")), st.ry(theta), [0]),
                    st.density(st.ket("1")))
    p0 = math.cos(theta / 2) ** 2
    zeros = 0
    for _ in range(n):
        outcome, post = st.measure(rho, 0, "Z", rng)
        zeros += outcome == 0
    assert abs(zeros / n - p0) < 4 * math.sqrt(p0 * (1 - p0) / n)
    outcome, post = st.measure(rho, 0, "X", rng)
    assert st.fidelity(post, st.ket("+1" if outcome == 0 else "-1")) == pytest.approx(1)


def test_measuring_half_of_bell_pair_collapses_partner():
    rng = np.random.default_rng(2)
    for basis, labels in (("Z", "01"), ("X", "+-")):
        outcome, post = st.measure(st.density(st.bell_state(0)), 0, basis, rng)
        assert st.fidelity(st.ptrace(post, [1]), st.ket(labels[outcome])) == pytest.approx(1)
    # Phi+ is anti-correlated in Y: <YY> = -1
    outcome, post = st.measure(st.density(st.bell_state(0)), 0, "Y", rng)
    assert st.fidelity(st.ptrace(post, [1]), st.ket("lr"[outcome])) == pytest.approx(1)


# --- channels --------------------------------------------------------------------------------


def test_channels_on_single_qubit():
    plus = st.density(st.ket("+"))
    assert np.allclose(st.depolarize(plus, 0, 1.0), np.eye(2) / 2)
    deph = st.dephase(plus, 0, 0.2)
    assert deph[0, 1] == pytest.approx(0.5 * (1 - 2 * 0.2))
    one = st.density(st.ket("1"))
    damped = st.amplitude_damp(one, 0, 0.3)
    assert np.allclose(np.diag(damped).real, [0.3, 0.7])
    for rho in (deph, damped, st.depolarize(plus, 0, 0.4)):
        assert np.trace(rho).real == pytest.approx(1)
        assert np.allclose(rho, rho.conj().T)


def test_t1_t2_rates():
    t, t1, t2 = 0.3, 1.0, 0.5
    one = memories.memory_decay(st.density(st.ket("1")), 0, t, t1, t2)
    assert one[1, 1].real == pytest.approx(math.exp(-t / t1))
    plus = memories.memory_decay(st.density(st.ket("+")), 0, t, t1, t2)
    assert abs(plus[0, 1]) == pytest.approx(0.5 * math.exp(-t / t2))
    with pytest.raises(ValueError):
        memories.t1t2_parameters(t, 1.0, 3.0)


def test_amplitude_damping_leaves_bell_diagonal_family():
    gamma = 0.3
    rho = st.density(st.bell_state(0))
    for q in (0, 1):
        rho = st.amplitude_damp(rho, q, gamma)
    # hand computation: F = ((2-g)^2 + g^2)/4 = 1 - g + g^2/2
    assert st.fidelity(rho, st.bell_state(0)) == pytest.approx(1 - gamma + gamma**2 / 2)
    assert not np.allclose(st.to_density(st.from_density(rho)), rho)


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


def test_bell_measure_samples_and_removes_qubits():
    rng = np.random.default_rng(6)
    rho = st.tensor(st.density(st.bell_state(0)), st.density(st.bell_state(0)))
    m1, m2, post = st.bell_measure(rho, 1, 2, rng)
    assert post.shape == (4, 4)
    corrected = st.apply_gate(post, st.pauli_correction(m1, m2), [1])
    assert st.fidelity(corrected, st.bell_state(0)) == pytest.approx(1)


# --- teleportation, CHSH, stored-pair dephasing ---------------------------------------------

# The six Pauli eigenstates form a 2-design, so their average equals the Haar average of the
# (quadratic in |psi>) teleportation fidelity exactly.
TWO_DESIGN = ["0", "1", "+", "-", "r", "l"]


@pytest.mark.parametrize("f", [1.0, 0.9, 0.7, 0.25])
def test_teleportation_with_werner_resource(f):
    total = 0.0
    for label in TWO_DESIGN:
        psi = st.ket(label)
        rho = st.tensor(st.density(psi), st.werner(f))
        for m1, m2, p, post in st.bell_measure_branches(rho, 0, 1):
            out = st.apply_gate(post, st.pauli_correction(m1, m2), [0])
            total += p * st.fidelity(out, psi)
    assert total / len(TWO_DESIGN) == pytest.approx((2 * f + 1) / 3, abs=EXACT)


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
        assert s == pytest.approx(2 * math.sqrt(2) * (4 * f - 1) / 3, abs=EXACT)


def test_chsh_sampled_within_four_sigma():
    rng = np.random.default_rng(7)
    f, n = 0.9, 1500
    rho = st.werner(f)
    e_exact = 1 / math.sqrt(2) * (4 * f - 1) / 3
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
    s_exact = 2 * math.sqrt(2) * (4 * f - 1) / 3
    assert abs(s_hat - s_exact) < 4 * math.sqrt(var)


@pytest.mark.parametrize("t", [0.0, 0.01, 0.05, 0.3])
def test_stored_pair_dephasing(t):
    t2 = 0.1
    expected = (1 + math.exp(-2 * t / t2)) / 2
    rho = st.density(st.bell_state(0))
    c = np.array([1.0, 0, 0, 0])
    for q in (0, 1):
        rho = memories.memory_decay(rho, q, t, math.inf, t2)
        c = memories.memory_dephase(c, t, t2)
    assert st.fidelity(rho, st.bell_state(0)) == pytest.approx(expected, abs=EXACT)
    assert c[0] == pytest.approx(expected, abs=EXACT)
