"""Heralded entanglement generation between two memories via a midpoint station.

Each node emits a photon entangled with its memory; both photons travel L/2 to a linear-optics
Bell-state measurement whose success heralds the pair. Scalar arguments, probabilities in [0, 1].
"""

from __future__ import annotations

from emulator.physics import channels


def heralding_probability(length_km: float, attenuation_db_per_km: float,
                          detector_efficiency: float, bsm_efficiency: float) -> float:
    """Success probability of one attempt: p = eta_bsm (eta_d 10^(-alpha L/20))^2.

    Each photon crosses L/2 of fibre (``channels.transmittance``) and is detected with
    ``detector_efficiency``; the BSM succeeds with ``bsm_efficiency`` (1/2 for the Barrett-Kok
    scheme: Barrett & Kok, PRA 71, 060310(R) (2005), both photons must be detected).
    """
    arm = detector_efficiency * float(channels.transmittance(length_km / 2.0,
                                                              attenuation_db_per_km))
    return float(bsm_efficiency * arm * arm)
