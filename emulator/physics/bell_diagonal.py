"""Bell-diagonal pairs: the coefficient fast path, Pauli-frame tables and Werner-state formulas.

A pair is the 4-vector c = (A, B, C, D) of weights on (Phi+, Psi-, Psi+, Phi-) (order of
Deutsch et al., PRL 77, 2818 (1996)); its fidelity to Phi+ is A. Index k is Phi+ with the
Pauli ``BELL_PAULI[k]`` (I, Y, X, Z) on either qubit, so Pauli channels and corrections act on
c by index permutations. Pure numpy; ``states`` turns coefficients into density matrices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

Array = np.ndarray

BELL_LABELS = ("Phi+", "Psi-", "Psi+", "Phi-")
BELL_PAULI = "IYXZ"  # Bell index k = Phi+ with BELL_PAULI[k] on one qubit
_X_BIT = (0, 1, 1, 0)  # parity bit of Bell index k
_Z_BIT = (0, 1, 0, 1)  # phase bit of Bell index k
_INDEX_OF_BITS = {(_X_BIT[k], _Z_BIT[k]): k for k in range(4)}
# COMPOSE[i, j]: Bell index of Pauli i times Pauli j (mod phase) = xor of (x, z) bits
COMPOSE = np.array(
    [[_INDEX_OF_BITS[(_X_BIT[i] ^ _X_BIT[j], _Z_BIT[i] ^ _Z_BIT[j])] for j in range(4)]
     for i in range(4)],
    dtype=np.intp,
)


def bell_index(m1: int, m2: int) -> int:
    """Bell index of BSM outcome ``(m1, m2)`` = (phase bit, parity bit) (``states`` docstring)."""
    return _INDEX_OF_BITS[(m2, m1)]


def bell_outcome(index: int) -> tuple[int, int]:
    """BSM outcome ``(m1, m2)`` that projects on Bell state ``index``."""
    return _Z_BIT[index], _X_BIT[index]


def werner_coefficients(fidelity: float) -> Array:
    """Werner state of fidelity F (Werner, PRA 40, 4277 (1989)): ``(F, b, b, b)``, b = (1-F)/3."""
    b = (1 - fidelity) / 3
    return np.array([fidelity, b, b, b])


def pauli(c: Array, k: int) -> Array:
    """Pauli ``BELL_PAULI[k]`` applied to either qubit: permutes ``c_j -> c_(j xor k)``."""
    return np.asarray(c)[COMPOSE[k]]


def swap(c1: Array, c2: Array) -> Array:
    """Entanglement swapping of pairs (a, b1) ~ ``c1`` and (b2, c) ~ ``c2``, BSM on (b1, b2),
    outcome corrected at ``c`` with ``states.pauli_correction(m1, m2)``.

    Pauli errors compose: ``c_out[k] = sum_{i xor j = k} c1[i] c2[j]``; every outcome has
    probability 1/4 and gives this state once corrected (Werner inputs: ``werner_swap``).
    """
    outer = np.multiply.outer(np.asarray(c1, dtype=float), np.asarray(c2, dtype=float))
    return np.bincount(COMPOSE.ravel(), weights=outer.ravel(), minlength=4)


def swap_outcome(c1: Array, c2: Array, m1: int, m2: int) -> Array:
    """State of (a, c) after the swap BSM gave ``(m1, m2)``, *before* the correction."""
    return pauli(swap(c1, c2), bell_index(m1, m2))


def werner_swap(f1: float, f2: float) -> float:
    """Fidelity after swapping Werner pairs: F = F1 F2 + (1-F1)(1-F2)/3 (Briegel, Dür, Cirac &
    Zoller, PRL 81, 5932 (1998)); the output is Werner again (``swap`` of Werner inputs)."""
    return f1 * f2 + (1 - f1) * (1 - f2) / 3


def werner_chain(fidelities: Iterable[float]) -> float:
    """Fidelity at the ends of a chain of Werner links swapped in any order: ``werner_swap``
    folded over the links (associative, since Werner pairs stay Werner)."""
    out = None
    for f in fidelities:
        out = f if out is None else werner_swap(out, f)
    if out is None:
        raise ValueError("no links")
    return out


def depolarize(c: Array, p: float) -> Array:
    """``states.depolarize`` with parameter ``p`` on one qubit of the pair: ``c -> (1-p) c + p/4``."""
    return (1 - p) * np.asarray(c) + p / 4


def dephase(c: Array, p: float) -> Array:
    """``states.dephase`` with parameter ``p`` on one qubit: ``c -> (1-p) c + p c[k xor Z]``
    (swaps Phi+ <-> Phi-, Psi+ <-> Psi-)."""
    c = np.asarray(c)
    return (1 - p) * c + p * c[COMPOSE[3]]


def werner_chsh(fidelity: float) -> float:
    """CHSH value of a Werner pair with the optimal settings a = Z, X and b = (Z +- X)/sqrt2:
    S = 2 sqrt2 (4F - 1)/3 (its correlations are (4F-1)/3 times those of Phi+; Horodecki et al.,
    Phys. Lett. A 200, 340 (1995)); above 2 (Bell violation) iff F > (1 + 3/sqrt2)/4 ~ 0.78."""
    return 2 * math.sqrt(2) * (4 * fidelity - 1) / 3
