"""Clock detuning in the daemon's memories: precession, and the statistics of Bell, GHZ and
unentangled frequency comparisons run against ``QuantumMemories`` (repeated runs in-process)."""

import math

import numpy as np
import pytest

from emulator.daemon.memories import MemorySpec, QuantumMemories
from emulator.physics import clocks
from emulator.physics import states as st

PHI_PLUS = [1.0, 0.0, 0.0, 0.0]
PLUS = st.density(np.array([1, 1]) / math.sqrt(2))
T = 0.1


def _memories(detunings, slots=2):
    return QuantumMemories({f"n{i}": MemorySpec(slots, detuning_hz=d)
                            for i, d in enumerate(detunings)})


def _ghz_round(mem, n, signs, t0, rng):
    """Chain of N - 1 heralded Phi+ pairs fused at the inner nodes (CNOT + Z measurement,
    X correction downstream), X at every s = -1 node, T of free precession, then Y at n0 and
    X elsewhere; returns the parity +-1."""
    nodes = [f"n{i}" for i in range(n)]
    pairs = [mem.store_pair(nodes[k], nodes[k + 1], PHI_PLUS, t0) for k in range(n - 1)]
    qubits = [pairs[0][0]] + [pairs[k][1] for k in range(n - 1)]
    for k in range(1, n - 1):
        left, right = pairs[k - 1][1], pairs[k][0]
        mem.apply_gate(nodes[k], [left, right], st.CNOT, t0)
        if mem.measure(nodes[k], right, "Z", t0, rng):
            mem.apply_pauli(nodes[k + 1], pairs[k][1], "X", t0)
    for k, s in enumerate(signs):
        if s == -1:
            mem.apply_pauli(nodes[k], qubits[k], "X", t0)
    bits = [mem.measure(nodes[k], q, "Y" if k == 0 else "X", t0 + T, rng)
            for k, q in enumerate(qubits)]
    return 1 - 2 * (sum(bits) % 2)


def _local_round(mem, n, t0, rng):
    """One |+> per node, T of precession, Y measurement: each node's +-1 Ramsey outcome."""
    out = []
    for k in range(n):
        (ref,) = mem.store_density([f"n{k}"], PLUS, t0)
        out.append(1 - 2 * mem.measure(f"n{k}", ref, "Y", t0 + T, rng))
    return out


def _estimates(outcomes, m):
    """Frequency estimates (Hz) of consecutive runs of ``m`` rounds: arcsin(mean)/(2 pi T)."""
    runs = np.asarray(outcomes, dtype=float)[: len(outcomes) // m * m]
    runs = runs.reshape(-1, m, *runs.shape[1:])
    return np.arcsin(np.clip(runs.mean(axis=1), -1, 1)) / (2 * math.pi * T)


def _collect(detunings, rounds, seed):
    n = len(detunings)
    signs = clocks.default_signs(n)
    mem, rng = _memories(detunings), np.random.default_rng(seed)
    ent = [_ghz_round(mem, n, signs, i * 1.0, rng) for i in range(rounds)]
    loc = [_local_round(mem, n, i * 1.0, rng) for i in range(rounds)]
    return signs, np.array(ent), np.array(loc)


def _std_close(sample_std, runs, expected):
    """Sample std of ``runs`` estimates against ``expected`` within 4 sigma (relative sigma
    1/sqrt(2(R-1))), plus 3 % for the arcsin estimator's second-order terms at M >= 20."""
    assert abs(sample_std / expected - 1) < 4 / math.sqrt(2 * (runs - 1)) + 0.03, \
        (sample_std, expected)


def _ratio_tol(runs):
    """4 sigma of the ratio of two independent sample stds over ``runs`` runs each."""
    return 4 / math.sqrt(runs - 1) + 0.03


def test_zero_detuning_keeps_the_fast_path_and_detuning_precesses():
    mem = _memories([0.0, 0.0])
    a, b = mem.store_pair("n0", "n1", PHI_PLUS, 0.0)
    mem.touch(a, 5.0)
    assert mem._group_of[a].coeffs is not None
    np.testing.assert_array_equal(mem.pair_coefficients(a, b, 5.0), PHI_PLUS)
    mem = _memories([0.3, 0.0])
    (q,) = mem.store_density(["n0"], PLUS, 0.0)
    rho = mem.state([q], 2.0)
    phi = clocks.ramsey_phase(0.3, 2.0)
    assert st.expectation(rho, st.Y, [0]) == pytest.approx(math.sin(phi))
    a, b = mem.store_pair("n0", "n1", PHI_PLUS, 0.0)
    rho = mem.state([a, b], 1.0)  # Phi+ gathers delta_a t: fidelity cos^2(phi/2)
    assert st.fidelity(rho, st.bell_state(0)) == pytest.approx(math.cos(math.pi * 0.3) ** 2)


def test_bell_parity_and_sqrt2_advantage_and_inverse_sqrt_n():
    detunings = [0.3, -0.2]  # D = delta_a - delta_b = 0.5 Hz, Phi = 0.314 rad
    signs, ent, loc = _collect(detunings, 4800, seed=11)
    d = sum(s * x for s, x in zip(signs, detunings))
    phi = 2 * math.pi * T * d
    assert abs(ent.mean() - math.sin(phi)) < 4 * math.sqrt((1 - math.sin(phi) ** 2) / len(ent))
    for m in (20, 80):
        e = _estimates(ent, m)
        u = (_estimates(loc, m) * signs).sum(axis=1)
        assert abs(e.mean() - d) < 4 * e.std(ddof=1) / math.sqrt(len(e)) + 0.02
        _std_close(e.std(ddof=1), len(e), math.sqrt(clocks.entangled_variance(m, T)))
        _std_close(u.std(ddof=1), len(u), math.sqrt(clocks.unentangled_variance(m, T)))
    # 4x the pairs: half the spread (1/sqrt N), and sqrt 2 between the schemes
    e20, e80 = _estimates(ent, 20).std(ddof=1), _estimates(ent, 80).std(ddof=1)
    runs = len(ent) // 80
    assert e20 / e80 == pytest.approx(2.0, rel=_ratio_tol(runs))
    u80 = (_estimates(loc, 80) * signs).sum(axis=1).std(ddof=1)
    assert u80 / e80 == pytest.approx(math.sqrt(2), rel=_ratio_tol(runs))
    assert u80 / e80 > 1.0  # the advantage is there


@pytest.mark.parametrize("detunings", [[0.3, -0.2, 0.1], [0.3, -0.2, 0.1, 0.4]])
def test_ghz_n_node_scaling(detunings):
    n, m = len(detunings), 20
    signs, ent, loc = _collect(detunings, 2000, seed=20 + n)
    d = sum(s * x for s, x in zip(signs, detunings))
    phi = 2 * math.pi * T * d
    assert abs(ent.mean() - math.sin(phi)) < 4 * math.sqrt((1 - math.sin(phi) ** 2) / len(ent))
    e = _estimates(ent, m) / n  # mean signed offset D/N
    u = (_estimates(loc, m) * signs).sum(axis=1) / n
    ent_var, loc_var = clocks.mean_variances(m, T, n)
    _std_close(e.std(ddof=1), len(e), math.sqrt(ent_var))
    _std_close(u.std(ddof=1), len(u), math.sqrt(loc_var))
    assert u.std(ddof=1) / e.std(ddof=1) == pytest.approx(math.sqrt(n), rel=_ratio_tol(len(e)))
