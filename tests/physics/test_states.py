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


def test_bell_measure_samples_and_removes_qubits():
    rng = np.random.default_rng(6)
    rho = st.tensor(st.density(st.bell_state(0)), st.density(st.bell_state(0)))
    m1, m2, post = st.bell_measure(rho, 1, 2, rng)
    assert post.shape == (4, 4)
    corrected = st.apply_gate(post, st.pauli_correction(m1, m2), [1])
    assert st.fidelity(corrected, st.bell_state(0)) == pytest.approx(1)
