"""T1/T2 memory channels: density path, Bell-diagonal path and the dephased-Werner formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import bell_diagonal as bd
from emulator.physics import memories
from emulator.physics import states as st

EXACT = 1e-9


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


def test_t1t2_parameters_give_the_stated_decay_rates():
    t, t1, t2 = 0.03, 0.1, 0.05
    rho = st.density(st.ket("+"))  # coherence 1/2, excited population 1/2
    out = memories.memory_decay(rho, 0, t, t1, t2)
    assert abs(out[0, 1]) == pytest.approx(0.5 * math.exp(-t / t2), abs=EXACT)
    assert out[1, 1].real == pytest.approx(0.5 * math.exp(-t / t1), abs=EXACT)
    with pytest.raises(ValueError):
        memories.t1t2_parameters(1.0, 0.1, 0.3)  # T2 > 2 T1 is unphysical
    assert memories.t1t2_parameters(1.0, math.inf, math.inf) == (0.0, 0.0)


def test_dephased_werner_equals_dephasing_both_qubits():
    f, ta, tb, t2a, t2b = 0.92, 0.02, 0.07, 0.1, 0.3
    c = bd.werner_coefficients(f)
    c = memories.memory_dephase(memories.memory_dephase(c, ta, t2a), tb, t2b)
    assert memories.dephased_werner(f, ta / t2a + tb / t2b) == pytest.approx(c[0], abs=EXACT)
    assert memories.dephased_werner(f, 0.0) == pytest.approx(f)
    # infinite storage: coherence gone, F -> (f + (1-f)/3)/2
    assert memories.dephased_werner(f, 1e9) == pytest.approx((f + (1 - f) / 3) / 2)


def test_bell_diagonal_dephasing_matches_density_path():
    rng = np.random.default_rng(2)
    c = rng.dirichlet(np.ones(4))
    rho = memories.memory_decay(st.to_density(c), 1, 0.04, math.inf, 0.1)
    assert np.allclose(st.from_density(rho), memories.memory_dephase(c, 0.04, 0.1))
