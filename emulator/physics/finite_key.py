"""Finite-key length of decoy-state BB84 after Lim, Curty, Walenta, Xu & Zbinden (2014).

Lim et al., "Concise security bounds for practical decoy-state quantum key distribution",
PRA 89, 022307 (2014) ("Lim14"): bounds eqs. (2)-(5) and the key length eq. (1), with
Hoeffding deviations per intensity. Counts are detections; lengths in bits.
"""

from __future__ import annotations

import math

import msgspec

from emulator.physics.entropy import binary_entropy
from emulator.physics.sources import mixture_photon_probability as tau


class FiniteKeyResult(msgspec.Struct, frozen=True):
    """Lim14 bounds: vacuum and single-photon counts in the key basis, phase error, length."""

    length: int
    s_key0: float
    s_key1: float
    s_test1: float
    v_test1: float
    phi: float


def _hoeffding(counts, total: int, mus, probs, eps_sec: float, sign: int) -> list[float]:
    """n_k^+- = e^k / p_k (n_k +- sqrt(n/2 ln(21/eps_sec))) (Lim14, after eq. (1))."""
    delta = math.sqrt(total / 2.0 * math.log(21.0 / eps_sec))
    return [math.exp(m) / p * (c + sign * delta) for c, m, p in zip(counts, mus, probs)]


def _vacuum_and_single(counts, mus, probs, eps_sec):
    """Lim14 eqs. (2), (3): lower bounds s_0 and s_1 on vacuum / single-photon events."""
    mu1, mu2, mu3 = mus
    total = int(sum(counts))
    lo = _hoeffding(counts, total, mus, probs, eps_sec, -1)
    hi = _hoeffding(counts, total, mus, probs, eps_sec, +1)
    tau0, tau1 = tau(0, mus, probs), tau(1, mus, probs)  # photon-number probabilities
    s0 = max(0.0, tau0 * (mu2 * lo[2] - mu3 * hi[1]) / (mu2 - mu3))
    s1 = (
        tau1
        * mu1
        * (lo[1] - hi[2] - (mu2**2 - mu3**2) / mu1**2 * (hi[0] - s0 / tau0))
        / (mu1 * (mu2 - mu3) - mu2**2 + mu3**2)
    )
    return s0, max(0.0, s1)


def _gamma(a: float, b: float, c: float, d: float) -> float:
    """Lim14 eq. (5) correction: sqrt((c+d)(1-b)b/(c d ln2) log2((c+d)/(c d (1-b) b) 21^2/a^2))."""
    if b <= 0.0 or b >= 1.0:
        return 0.0
    inner = (c + d) / (c * d * (1.0 - b) * b) * (21.0**2) / (a**2)
    return math.sqrt((c + d) * (1.0 - b) * b / (c * d * math.log(2.0)) * math.log2(inner))


def finite_key_length(
    mus: tuple[float, float, float],
    probs: tuple[float, float, float],
    key_counts: tuple[int, int, int],
    test_counts: tuple[int, int, int],
    test_errors: tuple[int, int, int],
    leaked_ec_bits: float,
    eps_sec: float = 1e-10,
    eps_cor: float = 1e-15,
) -> FiniteKeyResult:
    """Finite-key length after Lim14 for three intensities mu1 > mu2 + mu3, mu2 > mu3 >= 0.

    The key is every key-basis detection (all intensities; ``key_counts`` per intensity);
    the phase error comes from the fully disclosed test basis (``test_counts`` detections,
    ``test_errors`` errors per intensity). With h = H2:
      s_0 >= tau0 (mu2 n-_3 - mu3 n+_2)/(mu2 - mu3)                                  (2)
      s_1 >= tau1 mu1 [n-_2 - n+_3 - (mu2^2 - mu3^2)/mu1^2 (n+_1 - s_0/tau0)]
             / [mu1 (mu2 - mu3) - mu2^2 + mu3^2]                                     (3)
      v_1 <= tau1 (m+_2 - m-_3)/(mu2 - mu3) (test basis errors)                      (4)
      phi <= v_1/s_1^test + gamma(eps_sec, v_1/s_1^test, s_1^test, s_1^key)           (5)
      l = floor(s_0 + s_1 (1 - h(phi)) - leak_EC - 6 log2(21/eps_sec) - log2(2/eps_cor))
    """
    mu1, mu2, mu3 = mus
    if not (mu1 > mu2 + mu3 and mu2 > mu3 >= 0.0):
        raise ValueError(f"need mu1 > mu2 + mu3 and mu2 > mu3 >= 0, got {mus}")
    s_k0, s_k1 = _vacuum_and_single(key_counts, mus, probs, eps_sec)
    _, s_t1 = _vacuum_and_single(test_counts, mus, probs, eps_sec)
    m_total = int(sum(test_errors))
    m_hi = _hoeffding(test_errors, m_total, mus, probs, eps_sec, +1)
    m_lo = _hoeffding(test_errors, m_total, mus, probs, eps_sec, -1)
    v_t1 = tau(1, mus, probs) * (m_hi[1] - m_lo[2]) / (mu2 - mu3)
    if s_t1 <= 0.0 or s_k1 <= 0.0:
        return FiniteKeyResult(0, s_k0, s_k1, s_t1, v_t1, 0.5)
    ratio = min(max(v_t1 / s_t1, 0.0), 0.5)
    phi = min(0.5, ratio + _gamma(eps_sec, ratio, s_t1, s_k1))
    length = (
        s_k0
        + s_k1 * (1.0 - float(binary_entropy(phi)))
        - leaked_ec_bits
        - 6.0 * math.log2(21.0 / eps_sec)
        - math.log2(2.0 / eps_cor)
    )
    return FiniteKeyResult(max(0, math.floor(length)), s_k0, s_k1, s_t1, v_t1, phi)
