"""Quantum frequency conversion on a heralded entanglement link (visible/NIR memory -> telecom).

Each end's memory emits at ``wavelength_nm``; a conversion stage at the node shifts the photon
to ``target_wavelength_nm`` with ``efficiency`` and adds noise photons at ``noise_rate_hz``
into the fibre (Bock et al., Nat. Commun. 9, 1998 (2018): 854 -> 1310 nm, 26.5 % external
efficiency, 11.4 noise photons/s). Noise travels the fibre like the signal and is counted in
the station's detection gate of ``gate_s``; a gate with a noise click instead of a photon can
herald a false pair, which carries no entanglement (maximally mixed). Composes
``heralding.heralding_probability``; scalar arguments, probabilities in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from emulator.physics.heralding import heralding_probability


def noise_click_probability(noise_rate_hz: float, gate_s: float, arm_transmittance: float) -> float:
    """P(>= 1 noise photon detected in a gate): ``1 - exp(-r g eta)``, Poissonian noise
    attenuated like the signal over the arm (``eta`` = fibre transmittance x detector)."""
    return float(-math.expm1(-noise_rate_hz * gate_s * arm_transmittance))


@dataclass(frozen=True)
class Heralding:
    """One attempt's herald probability and the share of heralds made by both photons."""

    p_herald: float
    true_fraction: float

    def fidelity(self, source_fidelity: float) -> float:
        """Delivered (average) fidelity: ``w F + (1 - w) / 4`` (false heralds are I/4)."""
        return delivered_fidelity(source_fidelity, self.true_fraction)


def converted_heralding(length_km: float, attenuation_db_per_km: float,
                        detector_efficiency: float, bsm_efficiency: float,
                        efficiency: float, noise_rate_hz: float, gate_s: float) -> Heralding:
    """Herald probability with a conversion stage at both ends (each photon crosses L/2).

    Per arm the signal is detected with ``s = eta_c eta_d T(L/2)`` and noise with
    ``n = noise_click_probability(r, g, eta_d T(L/2))``; the arm clicks with
    ``c = s + (1 - s) n``; the station heralds when both arms click, with ``bsm_efficiency``
    whatever made the clicks: ``p = eta_bsm c^2``, of which ``s^2 / c^2`` are true pairs.
    ``attenuation_db_per_km`` is the fibre loss at the converted wavelength.
    """
    p_true = heralding_probability(length_km, attenuation_db_per_km,
                                   efficiency * detector_efficiency, bsm_efficiency)
    arm = math.sqrt(heralding_probability(length_km, attenuation_db_per_km,
                                          detector_efficiency, 1.0))
    s = efficiency * arm
    c = s + (1.0 - s) * noise_click_probability(noise_rate_hz, gate_s, arm)
    p = bsm_efficiency * c * c
    return Heralding(p, p_true / p if p > 0 else 1.0)


def delivered_fidelity(source_fidelity: float, true_fraction: float) -> float:
    """Fidelity of ``w rho_W(F) + (1 - w) I/4``: still Werner, ``F' = w F + (1 - w) / 4``."""
    return true_fraction * source_fidelity + (1.0 - true_fraction) / 4.0


def crossover_length_km(efficiency: float, attenuation_direct_db_per_km: float,
                        attenuation_converted_db_per_km: float) -> float:
    """Link length beyond which converted photons herald more true pairs than direct ones.

    Both photons pay ``-10 log10(eta_c)`` dB once and save ``(alpha_d - alpha_c) L/2`` each, so
    the rates ``eta_bsm (eta_d T_d(L/2))^2`` and ``eta_bsm (eta_c eta_d T_c(L/2))^2`` are equal
    at ``L* = -20 log10(eta_c) / (alpha_d - alpha_c)``; ``inf`` when conversion never wins.
    """
    if efficiency <= 0 or attenuation_direct_db_per_km <= attenuation_converted_db_per_km:
        return math.inf
    return -20.0 * math.log10(efficiency) / (attenuation_direct_db_per_km
                                             - attenuation_converted_db_per_km)


def fibre_attenuation(e: Any, wavelength_nm: int | None) -> float:
    """dB/km at ``wavelength_nm`` from a ``[links.entanglement]`` table's ``fibre_db_per_km``,
    else its ``attenuation_db_per_km``."""
    table = {int(k): v for k, v in e.fibre_db_per_km.items()}
    if wavelength_nm is not None and wavelength_nm in table:
        return table[wavelength_nm]
    return e.attenuation_db_per_km


def link_heralding(length_km: float, e: Any) -> Heralding:
    """Heralding of a ``[links.entanglement]`` table ``e`` (with or without conversion)."""
    conv = e.conversion
    if conv is None:
        return Heralding(heralding_probability(length_km, fibre_attenuation(e, e.wavelength_nm),
                                               e.detector_efficiency, e.bsm_efficiency), 1.0)
    return converted_heralding(length_km, fibre_attenuation(e, conv.target_wavelength_nm),
                               e.detector_efficiency, e.bsm_efficiency, conv.efficiency,
                               conv.noise_rate_hz, conv.gate_s)


def link_crossover_km(e: Any) -> float | None:
    """Crossover length of a converting link against sending its photons unconverted."""
    conv = e.conversion
    if conv is None:
        return None
    return crossover_length_km(conv.efficiency, fibre_attenuation(e, e.wavelength_nm),
                               fibre_attenuation(e, conv.target_wavelength_nm))
