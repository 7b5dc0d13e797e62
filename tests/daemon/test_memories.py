"""Memory slots: lazy T1/T2 against the formulas, cutoff, ownership, swapping through the registry.

Time is a plain float (a fake ``now``); exact results use a 1e-9 tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.daemon.memories import (
    CutoffExpired,
    EmptySlot,
    MemorySpec,
    NoFreeSlot,
    NotOwner,
    QuantumMemories,
    RegisterTooLarge,
    SlotRef,
)
from emulator.physics import bell_diagonal as bd
from emulator.physics import states as st

EXACT = 1e-9
PHI = np.array([1.0, 0, 0, 0])


def _mem(**specs: MemorySpec) -> QuantumMemories:
    return QuantumMemories(specs)


def _dephased_werner(f: float, q: float) -> float:
    """Werner F after a net Z flip with probability q: A' = (1-q) F + q (1-F)/3."""
    return (1 - q) * f + q * (1 - f) / 3


def test_stored_pair_dephases_as_formula_lazily():
    t2 = 0.1
    mem = _mem(a=MemorySpec(2, t2=t2), b=MemorySpec(2, t2=t2))
    a, b = mem.store_pair("a", "b", PHI, now=1.0)
    for t in (0.0, 0.02, 0.05, 0.2):  # several accesses == one access (semigroup)
        assert mem.fidelity(a, b, now=1.0 + t) == pytest.approx(
            (1 + math.exp(-2 * t / t2)) / 2, abs=EXACT)
    mem2 = _mem(a=MemorySpec(2, t2=t2), b=MemorySpec(2, t2=t2))
    a2, b2 = mem2.store_pair("a", "b", PHI, now=1.0)
    assert mem2.fidelity(a2, b2, now=1.2) == pytest.approx(mem.fidelity(a, b, 1.2), abs=EXACT)


def test_werner_pair_with_different_t2_per_node():
    f, t, ta, tb = 0.95, 0.03, 0.1, 0.4
    mem = _mem(a=MemorySpec(1, t2=ta), b=MemorySpec(1, t2=tb))
    a, b = mem.store_pair("a", "b", bd.werner_coefficients(f), now=0.0)
    # coherence factor of the Z error composed over both qubits: exp(-t/Ta) exp(-t/Tb)
    q = (1 - math.exp(-t / ta - t / tb)) / 2
    assert mem.fidelity(a, b, now=t) == pytest.approx(_dephased_werner(f, q), abs=EXACT)


def test_finite_t1_takes_density_path_and_matches_amplitude_damping():
    t1, t = 0.5, 0.2
    mem = _mem(a=MemorySpec(1, t1=t1, t2=2 * t1), b=MemorySpec(1, t1=t1, t2=2 * t1))
    a, b = mem.store_pair("a", "b", PHI, now=0.0)
    mem.touch(a, now=0.07)
    gamma = 1 - math.exp(-t / t1)
    rho = mem.state([a, b], now=t)
    assert st.fidelity(rho, st.bell_state(0)) == pytest.approx(1 - gamma + gamma**2 / 2, abs=EXACT)
    # populations relax towards |00>
    assert rho[0, 0].real > rho[3, 3].real


def test_not_owner_is_refused_and_changes_nothing():
    rng = np.random.default_rng(0)
    mem = _mem(a=MemorySpec(2), b=MemorySpec(2))
    a, b = mem.store_pair("a", "b", PHI, now=0.0)
    a2, _c = mem.store_pair("a", "b", PHI, now=0.0)
    with pytest.raises(NotOwner):
        mem.measure("b", a, "Z", 0.1, rng)
    with pytest.raises(NotOwner):
        mem.bell_measure("b", b, a2, 0.1, rng)
    with pytest.raises(NotOwner):
        mem.apply_pauli("a", b, "X", 0.1)
    with pytest.raises(NotOwner):
        mem.apply_gate("a", [a, b], st.CNOT, 0.1)
    with pytest.raises(NotOwner):
        mem.discard("b", a, 0.1)
    assert sum(mem.measurements.values()) == 0
    assert mem.fidelity(a, b, 0.1) == pytest.approx(1)
    assert mem.free_slots("a") == 0


def test_slots_run_out_and_are_reused():
    rng = np.random.default_rng(1)
    mem = _mem(a=MemorySpec(1), b=MemorySpec(3))
    a, _b = mem.store_pair("a", "b", PHI, now=0.0)
    with pytest.raises(NoFreeSlot):
        mem.store_pair("a", "b", PHI, now=0.0)
    assert mem.free_slots("b") == 2  # nothing allocated by the failed call
    mem.measure("a", a, "Z", 0.0, rng)
    with pytest.raises(EmptySlot):
        mem.measure("a", a, "Z", 0.0, rng)
    a_new, _ = mem.store_pair("a", "b", PHI, now=0.0)
    assert a_new == SlotRef("a", 0)
    assert mem.measurements["a"] == 1


def test_measuring_both_halves_of_phi_plus_agrees():
    rng = np.random.default_rng(2)
    mem = _mem(a=MemorySpec(4), b=MemorySpec(4))
    for basis in ("Z", "X", "Z", "X"):
        a, b = mem.store_pair("a", "b", PHI, now=0.0)
        assert mem.measure("a", a, basis, 0.0, rng) == mem.measure("b", b, basis, 0.0, rng)
    assert mem.free_slots("a") == 4 and mem.free_slots("b") == 4


def test_discard_leaves_partner_maximally_mixed():
    mem = _mem(a=MemorySpec(1), b=MemorySpec(1))
    a, b = mem.store_pair("a", "b", PHI, now=0.0)
    mem.discard("a", a, 0.0)
    assert np.allclose(mem.state([b], 0.0), np.eye(2) / 2)


def test_cutoff_discards_and_reports():
    rng = np.random.default_rng(3)
    mem = _mem(a=MemorySpec(2, cutoff=0.5), b=MemorySpec(2))
    a, b = mem.store_pair("a", "b", PHI, now=1.0)
    a2, b2 = mem.store_pair("a", "b", PHI, now=1.2)
    assert mem.next_deadline() == pytest.approx(1.5)
    assert mem.expire(1.5) == []  # exactly at the cutoff age is not older
    expired = mem.expire(1.6)
    assert [e.refs for e in expired] == [(a, b)]
    assert expired[0].oldest_stored_at == 1.0
    assert mem.free_slots("a") == 1 and mem.free_slots("b") == 1
    assert mem.next_deadline() == pytest.approx(1.7)
    with pytest.raises(CutoffExpired) as info:
        mem.measure("b", b2, "Z", 1.75, rng)
    assert set(info.value.expired.refs) == {a2, b2}
    assert mem.next_deadline() is None
    assert mem.free_slots("a") == 2


def test_swap_through_registry_with_decoherence_in_flight():
    """Pairs a-r and r-b stored at 0, BSM at r at t_s, correction at b after a classical delay."""
    rng = np.random.default_rng(4)
    f, t2, t_s, delay = 0.9, 0.1, 0.01, 0.05
    spec = MemorySpec(2, t2=t2)
    for _ in range(4):  # every outcome gives the same corrected state
        mem = _mem(a=spec, r=spec, b=spec)
        a, r1 = mem.store_pair("a", "r", bd.werner_coefficients(f), 0.0)
        r2, b = mem.store_pair("r", "b", bd.werner_coefficients(f), 0.0)
        m1, m2 = mem.bell_measure("r", r1, r2, t_s, rng)
        t_end = t_s + delay
        mem.apply_pauli("b", b, "X" if m2 else "I", t_end)
        mem.apply_pauli("b", b, "Z" if m1 else "I", t_end)
        # Pauli channels compose: total storage 4 t_s (both pairs) + 2 delay (a and b)
        lam = math.exp(-(4 * t_s + 2 * delay) / t2)
        f_swap = f * f + (1 - f) ** 2 / 3
        expected = _dephased_werner(f_swap, (1 - lam) / 2)
        assert mem.fidelity(a, b, t_end) == pytest.approx(expected, abs=EXACT)
        assert mem.free_slots("r") == 2
    no_delay = _dephased_werner(f * f + (1 - f) ** 2 / 3,
                                (1 - math.exp(-4 * t_s / t2)) / 2)
    assert expected < no_delay - 0.1


def test_swap_density_path_matches_fast_path():
    rng = np.random.default_rng(5)
    c1, c2 = rng.dirichlet(np.ones(4)), rng.dirichlet(np.ones(4))
    for _ in range(4):
        mem = _mem(a=MemorySpec(1), r=MemorySpec(2), b=MemorySpec(1))
        a, r1 = mem.store_pair("a", "r", c1, 0.0)
        r2, b = mem.store_pair("r", "b", c2, 0.0)
        mem.apply_gate("r", [r1], st.I2, 0.0)  # forces the density-matrix path
        m1, m2 = mem.bell_measure("r", r1, r2, 0.0, rng)
        mem.apply_gate("b", [b], st.pauli_correction(m1, m2), 0.0)
        assert np.allclose(mem.pair_coefficients(a, b, 0.0), bd.swap(c1, c2))


def test_teleport_through_registry():
    rng = np.random.default_rng(6)
    for label in ("0", "+", "r", "l"):
        mem = _mem(a=MemorySpec(2), b=MemorySpec(1))
        (q,) = mem.store_density(["a"], st.density(st.ket(label)), 0.0)
        a, b = mem.store_pair("a", "b", PHI, 0.0)
        m1, m2 = mem.bell_measure("a", q, a, 0.0, rng)
        mem.apply_gate("b", [b], st.pauli_correction(m1, m2), 0.0)
        assert st.fidelity(mem.state([b], 0.0), st.ket(label)) == pytest.approx(1, abs=EXACT)


def test_gates_join_states_up_to_the_limit():
    mem = QuantumMemories({"a": MemorySpec(3), "b": MemorySpec(3)}, max_register_qubits=4)
    a1, b1 = mem.store_pair("a", "b", PHI, 0.0)
    a2, b2 = mem.store_pair("a", "b", PHI, 0.0)
    mem.apply_gate("a", [a1, a2], st.CNOT, 0.0)
    # bilateral CNOT on two Phi+ pairs leaves them Phi+ (a known invariant)
    mem.apply_gate("b", [b1, b2], st.CNOT, 0.0)
    assert mem.fidelity(a1, b1, 0.0) == pytest.approx(1, abs=EXACT)
    assert mem.fidelity(b2, a2, 0.0) == pytest.approx(1, abs=EXACT)
    a3, _b3 = mem.store_pair("a", "b", PHI, 0.0)
    with pytest.raises(RegisterTooLarge):
        mem.apply_gate("a", [a1, a3], st.CNOT, 0.0)


def test_memory_spec_validation():
    with pytest.raises(ValueError):
        MemorySpec(1, t1=1.0, t2=3.0)
    with pytest.raises(ValueError):
        MemorySpec(1, cutoff=0.0)
