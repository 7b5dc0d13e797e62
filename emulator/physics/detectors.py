"""Threshold-detector model of a BB84 receiver: background, gain and errors per pulse.

Two threshold detectors (one per outcome), dark-count probability p_dc per detector per gate,
misalignment e_det (a photon lands in the wrong detector with equal bases), total efficiency
eta = eta_channel eta_detector. Source of the closed forms: Ma, Qi, Zhao & Lo, "Practical decoy
state for quantum key distribution", PRA 72, 012326 (2005) ("Ma05"), eqs. (8) and (9); they
write Q_mu ~= Y0 + 1 - e^{-eta mu}, here in the exact form of Y_n = 1 - (1 - Y0)(1 - eta)^n.
"""

from __future__ import annotations

import numpy as np

from emulator.physics.sources import signal_probability

E0 = 0.5  # error probability of a detection caused by vacuum / dark counts (Ma05: e0 = 1/2)


def background_yield(p_dc):
    """Y0 = 1 - (1 - p_dc)^2: at least one of the two detectors dark-counts in a gate."""
    return 1.0 - np.square(1.0 - np.asarray(p_dc, dtype=np.float64))


def gain(mu, eta, y0):
    """Q_mu = 1 - (1 - Y0) e^(-eta mu): click probability per pulse of mean photon number mu
    (Ma05 eq. (8), exact form: signal and dark clicks independent)."""
    return 1.0 - (1.0 - np.asarray(y0, dtype=np.float64)) * np.exp(-np.multiply(eta, mu))


def error_gain(mu, eta, y0, e_det):
    """E_mu Q_mu ~= e0 Y0 + e_det (1 - e^(-eta mu)), e0 = 1/2: errors per pulse, bases equal
    (Ma05 eq. (9)). O(p_dc) approximation of ``error_gain_exact``, which the sampler follows."""
    return E0 * np.asarray(y0, dtype=np.float64) + np.multiply(e_det, signal_probability(mu, eta))


def error_gain_exact(mu, eta, p_dc, e_det):
    """Exact errors per pulse of the sampled model, bases equal:
    E_mu Q_mu = e^{-eta mu} Y0/2 + (1 - e^{-eta mu}) (e_det + p_dc/2 - e_det p_dc).

    No signal: a lone dark count in the wrong detector is an error, a double dark click is one
    with prob. 1/2 (sum Y0/2). Signal (wrong detector with prob. e_det): a dark count in the
    other detector makes a double click, resolved by a fair coin. ``error_gain`` minus this is
    (1 - e^{-eta mu}) p_dc (1/2 + e_det - p_dc/2), i.e. O(p_dc) (derivation: docs/physics.md).
    """
    p_dc = np.asarray(p_dc, dtype=np.float64)
    s = signal_probability(mu, eta)
    return (1.0 - s) * background_yield(p_dc) / 2.0 + s * (e_det + p_dc / 2.0 - e_det * p_dc)


def qber(mu, eta, y0, e_det):
    """E_mu = E_mu Q_mu / Q_mu (Ma05 model): the QBER of pulses of intensity mu."""
    return error_gain(mu, eta, y0, e_det) / gain(mu, eta, y0)


def single_photon(eta, y0, e_det):
    """(Y1, e1) of the model: Y1 = 1 - (1 - Y0)(1 - eta), e1 = (e0 Y0 + e_det eta) / Y1
    (Ma05 yields Y_i and error rates e_i at i = 1, exact form)."""
    y1 = 1.0 - (1.0 - y0) * (1.0 - np.asarray(eta, dtype=np.float64))
    return y1, (E0 * y0 + e_det * eta) / y1
