"""Photon-number statistics of QKD sources: weak coherent, thermal, heralded SPDC, tabulated.

A phase-randomised coherent pulse is a Poisson mixture of Fock states (Lo, Ma & Chen, PRL 94,
230504 (2005)); a single mode of a thermal field, or one arm of a single-mode SPDC pair source,
is Bose-Einstein (Mandel & Wolf, "Optical Coherence and Quantum Optics" (1995), eq. 13.2-9);
heralding on a threshold detector of efficiency eta_h and dark-count probability d_h keeps
P(n | herald) = P_th(n) [1 - (1 - d_h)(1 - eta_h)^n] / P(herald) (Eisaman et al., Rev. Sci.
Instrum. 82, 071101 (2011), sec. IV). Photons are lost independently, so after a total
efficiency eta, P(at least one arrives) = 1 - sum_n P(n) (1 - eta)^n. Pure numpy, vectorised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CUTOFF = 60  # photon numbers kept when a distribution is tabulated (tail mass is reported)


def poisson_probability(n: int, mu):
    """P_mu(n) = e^-mu mu^n / n!: probability that a pulse of mean photon number mu has n."""
    mu = np.asarray(mu, dtype=np.float64)
    return np.exp(-mu) * np.power(mu, n) / math.factorial(n)


def mixture_photon_probability(n: int, mus: Sequence[float], probs: Sequence[float]) -> float:
    """tau_n = sum_k p_k e^-mu_k mu_k^n / n!: probability that a pulse carries n photons when
    intensity mu_k is chosen with probability p_k (Lim et al., PRA 89, 022307 (2014))."""
    return float(sum(p * float(poisson_probability(n, m)) for m, p in zip(mus, probs)))


def signal_probability(mu, eta):
    """1 - exp(-eta mu): a Poisson(mu) pulse keeps at least one photon after efficiency eta."""
    return -np.expm1(-np.multiply(eta, mu))


def poisson_distribution(mu: float, cutoff: int = CUTOFF) -> np.ndarray:
    """P(n), n = 0..cutoff, of a weak coherent pulse of mean photon number mu."""
    n = np.arange(cutoff + 1)
    log_p = n * math.log(mu) - mu - _log_factorial(n) if mu > 0 else np.where(n == 0, 0.0, -np.inf)
    return np.exp(log_p)


def thermal_distribution(mu: float, cutoff: int = CUTOFF) -> np.ndarray:
    """P(n) = mu^n / (1 + mu)^(n+1), n = 0..cutoff: single-mode thermal light of mean mu."""
    n = np.arange(cutoff + 1)
    return np.power(mu / (1.0 + mu), n) / (1.0 + mu)


def heralded_distribution(mu: float, herald_efficiency: float, herald_dark: float = 0.0,
                          cutoff: int = CUTOFF) -> np.ndarray:
    """P(n | herald), n = 0..cutoff, of the signal arm of a single-mode SPDC source of mean
    pair number mu, heralded by a threshold detector (efficiency, dark-count probability)."""
    pairs = thermal_distribution(mu, cutoff)
    n = np.arange(cutoff + 1)
    p_click = 1.0 - (1.0 - herald_dark) * np.power(1.0 - herald_efficiency, n)
    return pairs * p_click / herald_probability(mu, herald_efficiency, herald_dark)


def herald_probability(mu: float, herald_efficiency: float, herald_dark: float = 0.0) -> float:
    """P(herald) = 1 - (1 - d_h) / (1 + eta_h mu): the thermal generating function at 1 - eta_h."""
    return 1.0 - (1.0 - herald_dark) / (1.0 + herald_efficiency * mu)


def table_distribution(probabilities: Sequence[float], cutoff: int = CUTOFF) -> np.ndarray:
    """A user's P(n) table, n = 0..len-1, padded with zeros to cutoff; must sum to <= 1."""
    p = np.zeros(max(cutoff + 1, len(probabilities)))
    p[: len(probabilities)] = probabilities
    if np.any(p < 0) or p.sum() > 1.0 + 1e-9:
        raise ValueError("a photon-number table needs P(n) >= 0 summing to at most 1")
    return p


def click_probability(p_n: np.ndarray, eta: float, y0: float) -> float:
    """Q = sum_n P(n) Y_n, Y_n = 1 - (1 - Y0)(1 - eta)^n: a gate clicks (signal or dark)."""
    return float(1.0 - (1.0 - y0) * survival(p_n, eta))


def signal_click_probability(p_n: np.ndarray, eta: float) -> float:
    """1 - sum_n P(n)(1 - eta)^n: at least one of the pulse's photons is detected."""
    return float(1.0 - survival(p_n, eta))


def survival(p_n: np.ndarray, eta: float) -> float:
    """sum_n P(n)(1 - eta)^n, the generating function at 1 - eta; the unlisted tail (mass
    1 - sum P) counts as photons that always arrive (never vacuum)."""
    p_n = np.asarray(p_n, dtype=np.float64)
    return float(np.dot(p_n, np.power(1.0 - eta, np.arange(p_n.size))))


def error_click_probability(p_n: np.ndarray, eta: float, y0: float, e_det: float) -> float:
    """E Q = e0 Y0 + e_det (1 - sum_n P(n)(1 - eta)^n), e0 = 1/2: the Ma05 eq. (9) model with
    the Poisson generating function replaced by the source's."""
    return 0.5 * y0 + e_det * signal_click_probability(p_n, eta)


def mean_photon_number(p_n: np.ndarray) -> float:
    """sum_n n P(n) over the tabulated numbers."""
    return float(np.dot(np.arange(len(p_n)), p_n))


def _log_factorial(n: np.ndarray) -> np.ndarray:
    return np.array([math.lgamma(k + 1.0) for k in n])


def distribution(kind: str, mu: float, herald_efficiency: float = 1.0, herald_dark: float = 0.0,
                 table: Sequence[float] | None = None, cutoff: int = CUTOFF) -> np.ndarray:
    """P(n) of one intensity of a source of ``kind`` ("wcp", "thermal", "spdc", "table");
    intensity 0 of a non-table source is vacuum (the sender sends nothing)."""
    if kind == "table":
        if table is None:
            raise ValueError("a 'table' source needs its P(n) rows")
        return table_distribution(table, cutoff)
    if mu == 0.0:
        return table_distribution([1.0], cutoff)
    if kind == "wcp":
        return poisson_distribution(mu, cutoff)
    if kind == "thermal":
        return thermal_distribution(mu, cutoff)
    if kind == "spdc":
        return heralded_distribution(mu, herald_efficiency, herald_dark, cutoff)
    raise ValueError(f"unknown source kind {kind!r}")
