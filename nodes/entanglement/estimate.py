"""Fidelity of delivered pairs from measurement statistics, and the model they should match.

Nodes never see a state: they estimate. For pairs meant to be ``Phi+`` measured by both ends in
a common Pauli basis, ``F = <Phi+|rho|Phi+> = (1 + <XX> - <YY> + <ZZ>)/4`` (expansion of the
projector ``|Phi+><Phi+| = (II + XX - YY + ZZ)/4``; Nielsen & Chuang ex. 2.73 style). The model
is the Werner chain with pure dephasing (``emulator.physics.bell_diagonal.werner_chain``,
``emulator.physics.memories.dephased_werner``; docs/physics.md).
"""

from __future__ import annotations

import math

import numpy as np

from emulator.physics import bell_diagonal as bd

BASES = "XYZ"
PHI_PLUS_SIGN = {"X": 1, "Y": -1, "Z": 1}  # <PP> of Phi+


def correlation(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``E = <P (x) P>`` from outcome bits (0 = +1) and its standard error ``sqrt((1-E^2)/n)``."""
    n = len(a)
    if n == 0:
        return math.nan, math.nan
    e = float(np.mean(1 - 2 * (np.asarray(a) ^ np.asarray(b)).astype(float)))
    return e, math.sqrt(max(0.0, 1 - e * e) / n)


def fidelity_from_correlations(samples: dict[str, tuple[np.ndarray, np.ndarray]]
                               ) -> tuple[float, float]:
    """``F = (1 + <XX> - <YY> + <ZZ>)/4`` and its standard error from per-basis outcome
    arrays ``{basis: (bits_a, bits_b)}``; NaN if a basis has no sample."""
    total, var = 1.0, 0.0
    for basis in BASES:
        a, b = samples.get(basis, (np.zeros(0, np.uint8), np.zeros(0, np.uint8)))
        e, se = correlation(a, b)
        total += PHI_PLUS_SIGN[basis] * e
        var += se * se
    return total / 4, math.sqrt(var) / 4


def flips(frame: int, basis: str) -> int:
    """1 if the Pauli ``BELL_PAULI[frame]`` anticommutes with ``basis`` (flips its outcome):
    Pauli-frame tracking instead of a physical correction before a measurement."""
    pauli = bd.BELL_PAULI[frame]
    return int(pauli != "I" and pauli != basis)


def chsh_from_correlations(e: dict[tuple[int, int], float]) -> float:
    """``S = E(0,0) + E(0,1) + E(1,0) - E(1,1)`` (Clauser et al., PRL 23, 880 (1969)); for
    settings a0 = Z, a1 = X, b0/b1 = (Z +- X)/sqrt2 and a Werner pair ``S = 2 sqrt2 (4F-1)/3``."""
    return e[(0, 0)] + e[(0, 1)] + e[(1, 0)] - e[(1, 1)]
