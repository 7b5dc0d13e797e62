"""Teleportation through a Werner resource: the state engine against (2F+1)/3."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import states as st
from emulator.physics.teleportation import average_fidelity

EXACT = 1e-9


def _teleported_fidelity(psi: np.ndarray, f: float) -> float:
    """Exact outcome-averaged fidelity of ``psi`` teleported through ``werner(f)``."""
    rho = st.tensor(st.density(psi), st.werner(f))
    total = 0.0
    for m1, m2, p, post in st.bell_measure_branches(rho, 0, 1):
        out = st.apply_gate(post, st.pauli_correction(m1, m2), [0])
        total += p * st.fidelity(out, psi)
    return total


# The six Pauli eigenstates form a 2-design, so their average equals the Haar average of the
# (quadratic in |psi>) teleportation fidelity exactly.
TWO_DESIGN = ["0", "1", "+", "-", "r", "l"]


@pytest.mark.parametrize("f", [1.0, 0.9, 0.7, 0.25])
def test_teleportation_with_werner_resource(f):
    total = sum(_teleported_fidelity(st.ket(label), f) for label in TWO_DESIGN)
    assert total / len(TWO_DESIGN) == pytest.approx(average_fidelity(f), abs=EXACT)


def test_random_states_average_to_the_formula():
    """Werner noise is isotropic (invariant under U (x) U*), so every input state, not only the
    Haar average, is teleported with fidelity (2F+1)/3: random states check it one by one."""
    rng = np.random.default_rng(11)
    f = 0.8
    for _ in range(20):
        v = rng.normal(size=2) + 1j * rng.normal(size=2)
        psi = v / np.linalg.norm(v)
        assert _teleported_fidelity(psi, f) == pytest.approx(average_fidelity(f), abs=EXACT)


def test_classical_limit():
    assert average_fidelity(0.5) == pytest.approx(2 / 3)
    assert average_fidelity(1.0) == 1.0
    assert math.isclose(average_fidelity(0.25), 0.5)
