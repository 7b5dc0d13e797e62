"""Information-theoretic helpers shared by key-rate formulas and error correction."""

from __future__ import annotations

import numpy as np


def binary_entropy(p):
    """H2(p) = -p log2 p - (1-p) log2(1-p) in bits, H2(0) = H2(1) = 0; vectorised over p
    (Shannon 1948; clipped to [0, 1] so rounding just outside the range is harmless)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -p * np.log2(p) - (1.0 - p) * np.log2(1.0 - p)
    return np.where((p <= 0.0) | (p >= 1.0), 0.0, h)
