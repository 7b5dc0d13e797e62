"""Decoy-state bounds for any photon-number statistics, by linear programming.

After Foletto, Picciariello, Agnesi, Villoresi, Vallone, PRA 105, 012603 (2022)
(arXiv:2109.13830): intensity k emits n photons with known P_k(n); its gain and error gain are
Q_k = sum_n P_k(n) Y_n and E_k Q_k = sum_n P_k(n) H_n with yields 0 <= H_n <= Y_n <= 1. The
sums are truncated at a cut-off M and the unlisted tail (mass 1 - sum_{n<=M} P_k(n)) is left at
its worst case, anywhere in [0, tail]. Y1_L = min Y_1 and e1_U = max H_1 / Y1_L over that
polytope, solved with HiGHS (``scipy.optimize.linprog``). No Poisson assumption anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from emulator.physics import decoy, sources

DEFAULT_CUTOFF = 12  # photon numbers 0..M kept as LP variables


class LpBounds(msgspec.Struct, frozen=True):
    """Bounds from the LP: Y1_L, e1_U, Q1 = P_signal(1) Y1_L; ``feasible`` is False when the
    measured gains contradict the stated P(n) (then Y1_L = 0, e1_U = 1/2: no key)."""

    y1_lower: float
    e1_upper: float
    q1: float
    feasible: bool
    cutoff: int


def bounds(photon_numbers: Sequence[Sequence[float]], gains: Sequence[float],
           error_gains: Sequence[float], cutoff: int = DEFAULT_CUTOFF,
           signal: int = 0) -> LpBounds:
    """LP bounds on (Y1, e1) from per-intensity P_k(n) rows, Q_k and E_k Q_k.

    ``photon_numbers[k]`` lists P_k(0), P_k(1), ...; entries past ``cutoff`` join the tail.
    ``signal`` indexes the intensity whose single-photon gain Q1 the key rate uses.
    """
    from scipy.optimize import linprog  # here: ~0.7 CPU s of import every process avoids

    p = _rows(photon_numbers, cutoff)
    q = np.asarray(gains, dtype=np.float64)
    eq = np.asarray(error_gains, dtype=np.float64)
    if p.shape[0] != q.size or q.size != eq.size:
        raise ValueError("one P(n) row, gain and error gain per intensity")
    m = cutoff + 1
    tail = np.clip(1.0 - p.sum(axis=1), 0.0, 1.0)
    # Y block: Q_k - tail_k <= P_k . Y <= Q_k  (the tail's contribution lies in [0, tail_k])
    a_y = np.vstack([p, -p])
    b_y = np.concatenate([q, tail - q])
    c = np.zeros(m)
    c[1] = 1.0
    low = linprog(c, A_ub=a_y, b_ub=b_y, bounds=[(0.0, 1.0)] * m, method="highs")
    if low.status != 0:
        return LpBounds(0.0, 0.5, 0.0, False, cutoff)
    y1 = float(low.x[1])
    # joint (Y, H) block: the same gain constraints, the error-gain ones, and H_n <= Y_n
    zeros = np.zeros_like(p)
    a = np.vstack([np.hstack([a_y, np.zeros_like(a_y)]),
                   np.hstack([zeros, p]), np.hstack([zeros, -p]),
                   np.hstack([-np.eye(m), np.eye(m)])])
    b = np.concatenate([b_y, eq, tail - eq, np.zeros(m)])
    c2 = np.zeros(2 * m)
    c2[m + 1] = -1.0
    high = linprog(c2, A_ub=a, b_ub=b, bounds=[(0.0, 1.0)] * (2 * m), method="highs")
    if high.status != 0 or y1 <= 0.0:
        return LpBounds(max(y1, 0.0), 0.5, 0.0, high.status == 0, cutoff)
    e1 = min(0.5, float(high.x[m + 1]) / y1)
    return LpBounds(y1, e1, float(p[signal, 1] * y1), True, cutoff)


def _rows(photon_numbers: Sequence[Sequence[float]], cutoff: int) -> np.ndarray:
    """Rows truncated (or zero-padded) to P(0..cutoff)."""
    if cutoff < 1:
        raise ValueError("cutoff must be >= 1")
    out = np.zeros((len(photon_numbers), cutoff + 1))
    for k, row in enumerate(photon_numbers):
        row = np.asarray(row, dtype=np.float64)[: cutoff + 1]
        out[k, : row.size] = row
    return out


def model_counts(photon_numbers: Sequence[np.ndarray], eta: float, y0: float,
                 e_det: float) -> tuple[list[float], list[float]]:
    """Channel-model (Q_k, E_k Q_k) of each intensity's P(n) (``sources``): the prediction."""
    return ([sources.click_probability(pn, eta, y0) for pn in photon_numbers],
            [sources.error_click_probability(pn, eta, y0, e_det) for pn in photon_numbers])


def gllp_rate(photon_numbers: Sequence[np.ndarray], eta: float, y0: float, e_det: float,
              f: float = 1.16, q: float = 0.5) -> float:
    """Theory curve: GLLP bits per pulse with the LP bounds on the model's counts (signal =
    intensity 0); the analogue of ``decoy.gllp_rate`` for any photon-number statistics."""
    gains, errors = model_counts(photon_numbers, eta, y0, e_det)
    lp = bounds(photon_numbers, gains, errors)
    if lp.y1_lower <= 0 or gains[0] <= 0:
        return 0.0
    return float(decoy.gllp_key_rate(gains[0], errors[0] / gains[0], lp.q1, lp.e1_upper, f, q))
