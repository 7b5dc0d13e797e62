"""Propagation channels between nodes: what fraction of the photons arrives, and when.

Pure numpy, vectorised over lengths. Units: km, dB/km, seconds. Only standard single-mode fibre
is modelled so far; a free-space channel (diffraction and pointing loss) belongs here too.
"""

from __future__ import annotations

import numpy as np

# Group delay of standard single-mode fibre at 1550 nm: n_g ~ 1.468, c / n_g ~ 2.04e5 km/s
# (ITU-T G.652 fibre; the usual "5 us per km" rule).
FIBRE_GROUP_DELAY_S_PER_KM = 4.9e-6


def transmittance(length_km, attenuation_db_per_km):
    """Fibre transmittance eta_ch = 10^(-alpha L / 10) in [0, 1] (alpha in dB/km, L in km).

    The loss in dB grows linearly with length (Beer-Lambert); e.g. Ma, Qi, Zhao & Lo,
    PRA 72, 012326 (2005), with alpha = 0.21 dB/km for their GYS data set.
    """
    loss_db = np.multiply(attenuation_db_per_km, length_km)
    return np.power(10.0, -np.asarray(loss_db, dtype=np.float64) / 10.0)


def fibre_delay(length_km):
    """Propagation time L * FIBRE_GROUP_DELAY_S_PER_KM in seconds through ``length_km`` of fibre."""
    return np.multiply(length_km, FIBRE_GROUP_DELAY_S_PER_KM)
