"""Spontaneous Raman noise from classical light sharing a fibre with a quantum channel, and
what it does to a gated receiver: extra dark counts, BB84 QBER, payload depolarisation.

Eraerds, Walenta, Legré, Gisin & Zbinden, "Quantum key distribution and 1 Gbps data
encryption over a single fibre", NJP 12, 063027 (2010) ("Era10"). Units: W, nm, km, dB/km,
s; the Raman coefficient rho in 1/(km nm) (scattered power per unit pump power, fibre length
and filter bandwidth at the quantum wavelength). Pure numpy, vectorised.
"""

from __future__ import annotations

import numpy as np

from emulator.physics.detectors import background_yield, error_gain_exact, gain

PLANCK_J_S = 6.62607015e-34
LIGHT_SPEED_M_S = 299_792_458.0


def attenuation_per_km(db_per_km):
    """Power attenuation coefficient alpha = (dB/km) ln(10)/10 in 1/km, so that
    P(L) = P(0) e^(-alpha L) = P(0) 10^(-(dB/km) L/10)."""
    return np.multiply(db_per_km, np.log(10.0) / 10.0)


def forward_power(p_in_w, rho_per_km_nm, bandwidth_nm, length_km, db_per_km):
    """Co-propagating Raman power at the fibre's far end (W):
    ``P_f = P_out rho dlambda L = P_in e^(-alpha L) rho dlambda L`` (Era10).

    Light scattered at z has met pump loss e^(-alpha z) and then e^(-alpha (L - z)) to the
    end, the same at both wavelengths (the paper's assumption), so every z contributes
    P_in e^(-alpha L) rho dlambda dz.
    """
    alpha = attenuation_per_km(db_per_km)
    return np.asarray(p_in_w) * np.exp(-alpha * np.asarray(length_km)) * np.multiply(
        rho_per_km_nm, bandwidth_nm) * length_km


def backward_power(p_in_w, rho_per_km_nm, bandwidth_nm, length_km, db_per_km):
    """Counter-propagating Raman power back at the launch end (W):
    ``P_b = P_in rho dlambda (1 - e^(-2 alpha L))/(2 alpha) = P_out rho dlambda sinh(alpha L)/alpha``
    (Era10); light scattered at z has travelled 2z. Tends to P_in rho dlambda L as alpha L -> 0.
    """
    alpha = np.asarray(attenuation_per_km(db_per_km), dtype=np.float64)
    length = np.asarray(length_km, dtype=np.float64)
    safe = np.where(alpha > 0, alpha, 1.0)
    effective = np.where(alpha > 0, -np.expm1(-2 * alpha * length) / (2 * safe), length)
    return np.asarray(p_in_w) * np.multiply(rho_per_km_nm, bandwidth_nm) * effective


def photons_per_gate(power_w, wavelength_nm, gate_s, efficiency):
    """Detected noise photons per gate ``n = P lambda/(h c) tau eta``: photon flux
    P/(h c/lambda) (1/s) times gate width tau (s) times detection efficiency eta (Era10)."""
    energy_j = PLANCK_J_S * LIGHT_SPEED_M_S / (np.asarray(wavelength_nm) * 1e-9)
    return np.asarray(power_w) / energy_j * np.multiply(gate_s, efficiency)


def duty_cycle(bytes_sent, seconds: float, line_rate_bps: float):
    """Share of time the classical transmitter is on, from the link's measured traffic:
    8 bytes / (line rate * time), at most 1 (light only while a frame is on the line)."""
    if seconds <= 0 or line_rate_bps <= 0:
        raise ValueError("the interval and the line rate must be > 0")
    return np.minimum(8.0 * np.asarray(bytes_sent, dtype=np.float64) / (line_rate_bps * seconds),
                      1.0)


def noise_photons(co_w, counter_w, rho_per_km_nm, bandwidth_nm, length_km, db_per_km,
                  wavelength_nm, gate_s, efficiency, duty_cycle=1.0):
    """Noise photons detected per gate at the quantum receiver from classical light of mean
    launch power ``co_w`` at the quantum sender's end (forward) and ``counter_w`` at the
    receiver's end (backward), each on for the fraction ``duty_cycle`` of the time."""
    p = duty_cycle * (forward_power(co_w, rho_per_km_nm, bandwidth_nm, length_km, db_per_km)
                      + backward_power(counter_w, rho_per_km_nm, bandwidth_nm, length_km,
                                       db_per_km))
    return photons_per_gate(p, wavelength_nm, gate_s, efficiency)


def click_probability(n_photons):
    """Per-detector probability of a noise click in a gate, ``1 - e^(-n/2)``: Poisson photon
    number of mean n, unpolarised so split evenly between the receiver's two detectors."""
    return -np.expm1(-np.asarray(n_photons, dtype=np.float64) / 2)


def effective_dark_count(p_dc, n_photons):
    """Dark-count probability per detector per gate with Raman noise:
    ``1 - (1 - p_dc) e^(-n/2)`` (independent processes), to use as ``p_dc`` in
    ``detectors`` / ``detection.detect_frame``."""
    return 1 - (1 - np.asarray(p_dc, dtype=np.float64)) * np.exp(-np.asarray(n_photons) / 2)


def bb84_qber(mu, eta, p_dc, e_det, n_photons):
    """QBER of pulses of mean photon number mu on a fibre with Raman noise (n per gate):
    ``E = E Q / Q`` of the exact sampled model (``detectors.error_gain_exact``, ``gain``) with
    the effective dark count, so Y0 grows to 1 - (1 - p_dc)^2 e^(-n)."""
    p = effective_dark_count(p_dc, n_photons)
    return error_gain_exact(mu, eta, p, e_det) / gain(mu, eta, background_yield(p))


def depolarising_probability(n_photons):
    """Depolarising probability p (``states.depolarize``) equivalent to the noise for a
    payload detected by two threshold detectors: given the signal clicked, a noise click in the
    other detector (``click_probability``) makes a double click resolved by a coin, so every
    basis flips with p/2 — the statistics of depolarising with p = 1 - e^(-n/2)."""
    return click_probability(n_photons)
