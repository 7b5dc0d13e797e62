"""Fidelity of a hybrid flow from both ends' records (sans-I/O, pure numpy).

A record is (seq, basis, outcome) with basis 0/1/2 = Z/X/Y and outcome 0 for the +1
eigenstate; in ``"state"`` mode the sender's record holds the state index k of ``STATES``
instead of (basis, outcome). Only packets whose two records share a basis count (one in three).
"""

from __future__ import annotations

import math

import numpy as np

BASES = "ZXY"
# the six axis states: (theta, phi) for QubitPrepare, and the (basis, outcome) that finds them
STATES = [((0.0, 0.0), 0, 0), ((math.pi, 0.0), 0, 1), ((math.pi / 2, 0.0), 1, 0),
          ((math.pi / 2, math.pi), 1, 1), ((math.pi / 2, math.pi / 2), 2, 0),
          ((math.pi / 2, 3 * math.pi / 2), 2, 1)]
PHI_PLUS_SIGN = (1, 1, -1)  # <ZZ>, <XX>, <YY> of Phi+


def binomial_stderr(k: int, n: int) -> float:
    """Standard error of a share of k in n at the Agresti-Coull estimate (k + 2)/(n + 4): the
    plain sqrt(p(1-p)/n) reads 0 when all or none of the n agree, which n trials cannot show."""
    p = (k + 2) / (n + 4)
    return math.sqrt(p * (1 - p) / (n + 4))


def _join(mine: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of both (n, 3) arrays for the seqs they share, in the same order."""
    _, i, j = np.intersect1d(mine[:, 0], theirs[:, 0], assume_unique=True,
                             return_indices=True)
    return mine[i], theirs[j]


def pair_fidelity(src: np.ndarray, dst: np.ndarray) -> dict:
    """F with Phi+ = (1 + <ZZ> + <XX> - <YY>)/4 from the shared-basis records; its standard
    error from each basis's agreeing share (E_b = 2 share - 1): sqrt(sum_b se_b^2)/2."""
    a, b = _join(src, dst)
    same = a[:, 1] == b[:, 1]
    a, b = a[same], b[same]
    total, var, counts = 1.0, 0.0, []  # var: sum of the agreeing shares' squared errors
    for basis, sign in enumerate(PHI_PLUS_SIGN):
        rows = a[:, 1] == basis
        n = int(rows.sum())
        counts.append(n)
        if n == 0:
            return {"matched": int(same.sum()), "fidelity_mean": None, "fidelity_stderr": None}
        agree = int(np.count_nonzero(a[rows, 2] == b[rows, 2]))
        total += sign * (2 * agree / n - 1)
        var += binomial_stderr(agree, n) ** 2
    return {"matched": int(a.shape[0]), "fidelity_mean": total / 4,
            "fidelity_stderr": math.sqrt(var) / 2, "matched_per_basis": counts}


def state_fidelity(src: np.ndarray, dst: np.ndarray) -> dict:
    """Input-averaged fidelity over the six axis states (a 2-design): the share of packets
    measured in their state's axis that gave its outcome; its binomial standard error."""
    a, b = _join(src, dst)
    axis = np.array([s[1] for s in STATES])[a[:, 1]]
    want = np.array([s[2] for s in STATES])[a[:, 1]]
    rows = axis == b[:, 1]
    n = int(rows.sum())
    if n == 0:
        return {"matched": 0, "fidelity_mean": None, "fidelity_stderr": None}
    agree = int(np.count_nonzero(b[rows, 2] == want[rows]))
    return {"matched": n, "fidelity_mean": agree / n,
            "fidelity_stderr": binomial_stderr(agree, n)}


def estimate(mode: str, src: np.ndarray, dst: np.ndarray) -> dict:
    src = np.asarray(src, dtype=np.int64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.int64).reshape(-1, 3)
    return (pair_fidelity if mode == "pair" else state_fidelity)(src, dst)
