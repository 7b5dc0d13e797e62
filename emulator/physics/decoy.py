"""Asymptotic decoy-state estimation and key rates: vacuum + weak bounds, GLLP, PLOB.

Pure functions; probabilities per pulse, lengths in bits, ``log2`` everywhere, e0 = 1/2 is the
error rate of vacuum (dark-count) detections. The channel model (gain, QBER) is
``detectors``; the finite-key version is ``finite_key``. Sources:

* Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005) ("Ma05"): the vacuum + weak decoy bounds Y1_L,
  e1_U (eqs. (34), (37)).
* Gottesman, Lo, Lutkenhaus, Preskill, QIC 4, 325 (2004) ("GLLP"): R = q{-Q_mu f H2(E_mu)
  + Q1 [1 - H2(e1)]} (Ma05 eq. (1)).
* Pirandola, Laurenza, Ottaviani, Banchi, Nat. Commun. 8, 15043 (2017): PLOB bound.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from emulator.physics import detectors
from emulator.physics.detectors import E0
from emulator.physics.entropy import binary_entropy


def y1_lower(mu, nu, q_mu, q_nu, y0):
    """Vacuum + weak decoy lower bound on the single-photon yield (Ma05 eq. (34)):

    Y1_L = mu / (mu nu - nu^2) (Q_nu e^nu - Q_mu e^mu nu^2/mu^2 - (mu^2 - nu^2)/mu^2 Y0),
    valid for 0 < nu < mu (and mu + nu < 1 for the bound to be tight). Y0 = gain of vacuum.
    """
    if not 0.0 < nu < mu:
        raise ValueError(f"need 0 < nu < mu, got mu={mu}, nu={nu}")
    return (
        mu
        / (mu * nu - nu * nu)
        * (
            q_nu * np.exp(nu)
            - q_mu * np.exp(mu) * nu * nu / (mu * mu)
            - (mu * mu - nu * nu) / (mu * mu) * y0
        )
    )


def e1_upper(nu, q_nu, e_nu, y1_l, y0):
    """Upper bound on the single-photon error rate (Ma05 eq. (37)), capped at 1/2:

    e1_U = (E_nu Q_nu e^nu - e0 Y0) / (Y1_L nu).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = (e_nu * q_nu * np.exp(nu) - E0 * y0) / (y1_l * nu)
    return np.where(np.asarray(y1_l) > 0, np.clip(e1, 0.0, 0.5), 0.5)


def q1_lower(mu, y1_l):
    """Q1 = Y1_L mu e^-mu: gain of single-photon signal pulses (lower bound)."""
    return y1_l * mu * np.exp(-mu)


def gllp_key_rate(q_mu, e_mu, q1, e1, f, q=0.5):
    """GLLP secret bits per pulse, R = q {-Q_mu f H2(E_mu) + Q1 [1 - H2(e1)]}, clipped at 0.

    ``q`` is the sifting factor (1/2 for symmetric BB84), ``f`` the EC efficiency.
    """
    r = q * (-q_mu * f * binary_entropy(e_mu) + q1 * (1.0 - binary_entropy(e1)))
    return np.maximum(r, 0.0)


def gllp_rate(mu, nu, eta, y0, e_det, f=1.16, q=0.5, decoy="vacuum+weak"):
    """Theory curve: GLLP rate per pulse from the channel model (``detectors``, Ma05).

    ``decoy="vacuum+weak"`` estimates Q1, e1 with ``y1_lower``/``e1_upper`` from the model's
    gains (what the emulated protocol measures); ``"infinite"`` uses the true Y1, e1.
    Vectorised over ``eta``; 0 beyond the cut-off distance.
    """
    eta = np.asarray(eta, dtype=np.float64)
    q_mu, e_mu = detectors.gain(mu, eta, y0), detectors.qber(mu, eta, y0, e_det)
    if decoy == "infinite":
        y1, e1 = detectors.single_photon(eta, y0, e_det)
    elif decoy == "vacuum+weak":
        q_nu, e_nu = detectors.gain(nu, eta, y0), detectors.qber(nu, eta, y0, e_det)
        y1 = y1_lower(mu, nu, q_mu, q_nu, y0)
        e1 = e1_upper(nu, q_nu, e_nu, y1, y0)
    else:
        raise ValueError(f"decoy must be 'vacuum+weak' or 'infinite', got {decoy!r}")
    rate = gllp_key_rate(q_mu, e_mu, q1_lower(mu, np.maximum(y1, 0.0)), e1, f, q)
    return np.where(y1 > 0, rate, 0.0)


def plob_bound(eta):
    """Repeaterless capacity -log2(1 - eta) in bits per channel use (PLOB 2017)."""
    with np.errstate(divide="ignore"):
        return -np.log2(1.0 - np.asarray(eta, dtype=np.float64))


class DecoyEstimate(msgspec.Struct, frozen=True):
    """Measured gains/QBERs per intensity and the vacuum + weak decoy bounds derived."""

    mu: float
    nu: float
    q_mu: float
    e_mu: float
    q_nu: float
    e_nu: float
    y0: float
    y1_lower: float
    e1_upper: float
    q1: float


def estimate(
    mu: float,
    nu: float,
    sent: tuple[int, int, int],
    detected: tuple[int, int, int],
    errors: tuple[int, int, int],
) -> DecoyEstimate:
    """Vacuum + weak bounds from counts ordered (signal mu, decoy nu, vacuum).

    ``sent`` are pulses whose basis matched (sifted slots), ``detected`` the detections among
    them and ``errors`` the disclosed-sample errors scaled to them (or exact counts).
    """
    q = [d / s if s else 0.0 for d, s in zip(detected, sent)]
    e = [x / d if d else 0.0 for x, d in zip(errors, detected)]
    y0 = q[2]
    y1 = float(y1_lower(mu, nu, q[0], q[1], y0))
    e1 = float(e1_upper(nu, q[1], e[1], y1, y0))
    return DecoyEstimate(
        mu=mu,
        nu=nu,
        q_mu=q[0],
        e_mu=e[0],
        q_nu=q[1],
        e_nu=e[1],
        y0=y0,
        y1_lower=y1,
        e1_upper=e1,
        q1=float(q1_lower(mu, max(y1, 0.0))),
    )


def secret_key_length(
    n_sifted: int,
    q_mu: float,
    q1: float,
    e1: float,
    leaked_ec_bits: int,
    verification_bits: int = 0,
    auth_bits: int = 0,
    eps_pa: float = 1e-10,
) -> int:
    """Privacy-amplification output length for a block of ``n_sifted`` signal-intensity bits.

    GLLP per block with the measured leakage instead of f H2(E):
    l = floor(n Q1/Q_mu [1 - H2(e1)] - leak_EC - verification - auth - 2 log2(1/eps_pa)),
    where n Q1/Q_mu is the estimated number of bits from single-photon pulses. 0 if negative.
    """
    if n_sifted <= 0 or q_mu <= 0 or q1 <= 0:
        return 0
    single = n_sifted * min(1.0, q1 / q_mu) * (1.0 - float(binary_entropy(e1)))
    length = single - leaked_ec_bits - verification_bits - auth_bits - 2.0 * math.log2(1.0 / eps_pa)
    return max(0, math.floor(length))


def entangled_key_length(n: int, e: float, leaked_ec_bits: int, verification_bits: int = 0,
                         eps_pa: float = 1e-10) -> int:
    """Entanglement-based (BBM92) block: l = floor(n [1 - H2(e)] - leak_EC - verification
    - 2 log2(1/eps_pa)), 0 if negative: ``secret_key_length`` with every bit counted (Q1 = Q_mu)
    and the phase error taken equal to the sampled bit error e (docs/physics.md)."""
    return secret_key_length(n, 1.0, 1.0, e, leaked_ec_bits, verification_bits, 0, eps_pa)
