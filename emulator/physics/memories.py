"""Decoherence of qubits stored in quantum memories: T1/T2 channels and their effect on pairs.

Times in seconds; ``math.inf`` switches a process off. The density-matrix channel composes
``states.amplitude_damp`` and ``states.dephase``; with T1 = inf, Bell-diagonal pairs stay
Bell-diagonal and only the product of the coherence factors exp(-t_i/T2_i) matters.
"""

from __future__ import annotations

import math

import numpy as np

from emulator.physics import bell_diagonal as bd
from emulator.physics import states as st

Array = np.ndarray


def t1t2_parameters(t: float, t1: float, t2: float) -> tuple[float, float]:
    """``(gamma, p)`` of the memory channel for storage time ``t``: amplitude damping
    ``gamma = 1 - exp(-t/T1)`` then dephasing ``p = (1 - exp(-t/T2 + t/(2 T1)))/2``.

    Composed, populations relax with ``exp(-t/T1)`` and coherences decay with ``exp(-t/T2)``
    (the standard T1/T2 model, e.g. Nielsen & Chuang §8.3.5-8.3.6, NetSquid's T1T2NoiseModel);
    needs ``T2 <= 2 T1``.
    """
    if t2 > 2 * t1:
        raise ValueError(f"T2 = {t2} exceeds 2 T1 = {2 * t1}")
    t = max(t, 0.0)
    gamma = 0.0 if math.isinf(t1) else -math.expm1(-t / t1)
    rate = (0.0 if math.isinf(t2) else 1 / t2) - (0.0 if math.isinf(t1) else 1 / (2 * t1))
    p = -math.expm1(-t * rate) / 2
    return gamma, p


def memory_decay(rho: Array, qubit: int, t: float, t1: float, t2: float) -> Array:
    """T1/T2 decoherence of ``qubit`` of a density matrix stored ``t`` s (``t1t2_parameters``)."""
    gamma, p = t1t2_parameters(t, t1, t2)
    if gamma > 0:
        rho = st.amplitude_damp(rho, qubit, gamma)
    if p > 0:
        rho = st.dephase(rho, qubit, p)
    return rho


def memory_dephase(c: Array, t: float, t2: float) -> Array:
    """Pure T2 dephasing of one qubit of a Bell-diagonal pair stored ``t`` s:
    ``bell_diagonal.dephase`` with ``p = (1 - exp(-t/T2))/2``.

    Only valid with ``T1 = inf``: amplitude damping leaves the Bell-diagonal family, so finite
    T1 takes the density-matrix path (``memory_decay``). For Phi+ with both qubits stored
    ``t``: ``F(t) = (1 + exp(-2t/T2))/2``.
    """
    if math.isinf(t2) or t <= 0:
        return np.asarray(c)
    return bd.dephase(c, -math.expm1(-t / t2) / 2)


def dephased_werner(f: float, decay: float) -> float:
    """Fidelity of a Werner pair of fidelity ``f`` whose qubits were stored ``t_i`` under
    ``T2_i``, ``decay = sum t_i/T2_i``: ``F = f - (1-lam)/2 (f - (1-f)/3)``, ``lam = exp(-decay)``.

    The dephasing moves weight (1-lam)/2 between Phi+ and Phi- (``memory_dephase``
    composed over the qubits; T1 = inf).
    """
    lam = math.exp(-decay)
    return f - (1 - lam) / 2 * (f - (1 - f) / 3)
