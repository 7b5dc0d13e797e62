"""Decoy-state parameter estimation and secret-key-length formulas (asymptotic and finite).

Pure functions; probabilities per pulse, lengths in bits, ``log2`` everywhere, e0 = 1/2 is the
error rate of vacuum (dark-count) detections. Sources:

* Ma, Qi, Zhao, Lo, PRA 72, 012326 (2005) ("Ma05"): channel model eqs. (7)-(9) and the
  vacuum + weak decoy bounds Y1_L, e1_U (eqs. (34), (37)).
* Gottesman, Lo, Lutkenhaus, Preskill, QIC 4, 325 (2004) ("GLLP"): R = q{-Q_mu f H2(E_mu)
  + Q1 [1 - H2(e1)]}.
* Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014) ("Lim14"): finite-key bounds
  eqs. (1)-(5) and the key length, with Hoeffding deviations per intensity.
* Pirandola, Laurenza, Ottaviani, Banchi, Nat. Commun. 8, 15043 (2017): PLOB bound.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

E0 = 0.5  # error probability of a detection caused by vacuum / dark counts


def binary_entropy(p):
    """H2(p) = -p log2 p - (1-p) log2(1-p), with H2(0) = H2(1) = 0; vectorised over p."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -p * np.log2(p) - (1.0 - p) * np.log2(1.0 - p)
    return np.where((p <= 0.0) | (p >= 1.0), 0.0, h)


def channel_transmittance(length_km, alpha_db_per_km=0.2, detector_efficiency=1.0, extra_db=0.0):
    """eta = eta_det 10^(-(alpha L + extra)/10): overall transmittance incl. Bob's detector."""
    loss_db = alpha_db_per_km * np.asarray(length_km, dtype=np.float64) + extra_db
    return detector_efficiency * 10.0 ** (-loss_db / 10.0)


def gain(mu, eta, y0):
    """Q_mu = 1 - (1 - Y0) e^(-eta mu): detection probability per pulse of mean photon number
    mu (Ma05 eq. (8), exact form with Y0 and signal clicks independent)."""
    return 1.0 - (1.0 - y0) * np.exp(-eta * np.asarray(mu, dtype=np.float64))


def error_gain(mu, eta, y0, e_det):
    """E_mu Q_mu = e0 Y0 + e_det (1 - e^(-eta mu)) (Ma05 eq. (9)), e0 = 1/2."""
    return E0 * y0 + e_det * (1.0 - np.exp(-eta * np.asarray(mu, dtype=np.float64)))


def qber(mu, eta, y0, e_det):
    """E_mu = error_gain / gain: the QBER of pulses of intensity mu."""
    return error_gain(mu, eta, y0, e_det) / gain(mu, eta, y0)


def true_single_photon(eta, y0, e_det):
    """(Y1, e1) of the channel model: Y1 = 1 - (1-Y0)(1-eta), e1 = (e0 Y0 + e_det eta)/Y1."""
    y1 = 1.0 - (1.0 - y0) * (1.0 - eta)
    return y1, (E0 * y0 + e_det * eta) / y1


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
    """Theory curve: GLLP rate per pulse from the channel model (Ma05 eqs. (8), (9)).

    ``decoy="vacuum+weak"`` estimates Q1, e1 with ``y1_lower``/``e1_upper`` from the model's
    gains (what the emulated protocol measures); ``"infinite"`` uses the true Y1, e1.
    Vectorised over ``eta``; 0 beyond the cut-off distance.
    """
    eta = np.asarray(eta, dtype=np.float64)
    q_mu, e_mu = gain(mu, eta, y0), qber(mu, eta, y0, e_det)
    if decoy == "infinite":
        y1, e1 = true_single_photon(eta, y0, e_det)
    elif decoy == "vacuum+weak":
        q_nu, e_nu = gain(nu, eta, y0), qber(nu, eta, y0, e_det)
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


# ------------------------------------------------------------------ finite key (Lim14)


class FiniteKeyResult(msgspec.Struct, frozen=True):
    """Lim14 bounds: vacuum and single-photon counts in the key basis, phase error, length."""

    length: int
    s_key0: float
    s_key1: float
    s_test1: float
    v_test1: float
    phi: float


def _tau(n: int, mus, probs) -> float:
    """tau_n = sum_k p_k e^-k k^n / n!: probability that a pulse carries n photons."""
    return float(sum(p * math.exp(-m) * m**n / math.factorial(n) for m, p in zip(mus, probs)))


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
    tau0, tau1 = _tau(0, mus, probs), _tau(1, mus, probs)
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
    v_t1 = _tau(1, mus, probs) * (m_hi[1] - m_lo[2]) / (mu2 - mu3)
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
