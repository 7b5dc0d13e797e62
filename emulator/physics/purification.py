"""Entanglement purification recurrences (BBPSSW, DEJMPS) on Bell-diagonal coefficients.

One round consumes two pairs (source, target) and keeps the source with the probability that
both ends' target measurements agree. Coefficient order (Phi+, Psi-, Psi+, Phi-) as in
``bell_diagonal``; the protocol core that asks daemons for the gates is
``nodes.entanglement.purification``.
"""

from __future__ import annotations

import numpy as np

from emulator.physics import bell_diagonal as bd


def bilateral_cnot_keep(c_src, c_tgt) -> tuple[float, np.ndarray]:
    """Bilateral CNOT (source -> target on both sides), target measured in Z at both ends,
    kept when the two outcomes agree. Returns ``(p_success, source coefficients if kept)``.

    Pauli errors propagate X: control -> target, Z: target -> control; the outcomes agree iff
    the two input X bits agree, and the source keeps (x1, z1 xor z2):
    ``A' = A1A2 + D1D2, B' = B1C2 + C1B2, C' = B1B2 + C1C2, D' = A1D2 + D1A2`` over
    ``N = (A1+D1)(A2+D2) + (B1+C1)(B2+C2)`` (Bennett et al., PRA 54, 3824 (1996), §III).
    """
    a1, b1, c1, d1 = (float(v) for v in c_src)
    a2, b2, c2, d2 = (float(v) for v in c_tgt)
    n = (a1 + d1) * (a2 + d2) + (b1 + c1) * (b2 + c2)
    out = np.array([a1 * a2 + d1 * d2, b1 * c2 + c1 * b2, b1 * b2 + c1 * c2, a1 * d2 + d1 * a2])
    return n, out / n


def dejmps_rotation(c) -> np.ndarray:
    """Bilateral ``Rx(pi/2)`` at one end and ``Rx(-pi/2)`` at the other: exchanges the Psi-
    and Phi- weights, ``(A, B, C, D) -> (A, D, C, B)`` (Deutsch et al., PRL 77, 2818 (1996))."""
    c = np.asarray(c, dtype=float)
    return c[[0, 3, 2, 1]]


def dejmps(c_src, c_tgt) -> tuple[float, np.ndarray]:
    """One DEJMPS round: rotation then ``bilateral_cnot_keep``. For identical pairs
    ``A' = (A^2+B^2)/N, B' = 2CD/N, C' = (C^2+D^2)/N, D' = 2AB/N``, ``N = (A+B)^2 + (C+D)^2``
    (Deutsch et al. 1996, eq. 3). Returns ``(p_success, output coefficients)``."""
    return bilateral_cnot_keep(dejmps_rotation(c_src), dejmps_rotation(c_tgt))


def werner_twirl(c) -> np.ndarray:
    """Depolarising twirl to the Werner state of the same fidelity: ``(A, b, b, b)``."""
    return bd.werner_coefficients(float(np.asarray(c)[0]))


def bbpssw(c_src, c_tgt) -> tuple[float, np.ndarray]:
    """One BBPSSW round: twirl both pairs to Werner, then ``bilateral_cnot_keep``.

    For Werner inputs of fidelity F, with ``b = (1-F)/3``: ``p = F^2 + 2Fb + 5b^2`` and
    ``F' = (F^2 + b^2)/p`` (Bennett et al., PRL 76, 722 (1996)). The output is Bell-diagonal
    but not Werner; the next round twirls it again.
    """
    return bilateral_cnot_keep(werner_twirl(c_src), werner_twirl(c_tgt))


STEPS = {"bbpssw": bbpssw, "dejmps": dejmps}


def rounds(protocol: str, c, n: int) -> tuple[list[float], np.ndarray]:
    """``n`` recurrence rounds, each on two copies of the previous output (``2**n`` input
    pairs). Returns the success probability of every round and the final coefficients."""
    step = STEPS[protocol]
    probs = []
    c = np.asarray(c, dtype=float)
    for _ in range(n):
        p, c = step(c, c)
        probs.append(p)
    return probs, c
