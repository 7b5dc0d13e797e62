"""Photon statistics of weak coherent (phase-randomised laser) sources.

A phase-randomised coherent pulse of mean photon number mu is a Poisson mixture of Fock
states (Lo, Ma & Chen, PRL 94, 230504 (2005)); photons are lost independently, so after a
total efficiency eta the photon count is Poisson(eta mu). Pure numpy, vectorised.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


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
