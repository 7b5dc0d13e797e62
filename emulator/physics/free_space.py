"""Free-space optical links: diffraction into a finite receiver, pointing jitter, atmosphere.

Pure numpy, vectorised. Units: km for distances along the link, m for beam radii and
apertures, rad for angles. Gaussian-beam model (e.g. Bourgoin et al., New J. Phys. 15, 023006
(2013), "A comprehensive design and performance analysis of low Earth orbit satellite quantum
communication"); pass geometry in ``satellite``. Derivations: docs/physics.md, "Free-space and
satellite links".
"""

from __future__ import annotations

import numpy as np


def beam_radius(length_km, divergence_rad, waist_m=0.0):
    """1/e^2 intensity radius of a Gaussian beam after ``length_km``: w = sqrt(w0^2 + (theta L)^2)
    with theta the far-field half-angle divergence (w ~ theta L far from the transmitter)."""
    spread = np.multiply(divergence_rad, np.multiply(length_km, 1e3))
    return np.sqrt(np.square(waist_m) + np.square(spread))


def pointing_broadened_radius(w_m, jitter_rad, length_km):
    """Long-term radius with a random pointing offset of per-axis std sigma (rad):
    w_lt = sqrt(w^2 + 4 (sigma L)^2). For an aperture small against w the collected fraction
    2a^2/w^2 e^(-2 r^2/w^2), averaged over the Rayleigh offset r, is 2a^2/w_lt^2 exactly."""
    offset = np.multiply(jitter_rad, np.multiply(length_km, 1e3))
    return np.sqrt(np.square(w_m) + 4 * np.square(offset))


def geometric_efficiency(aperture_radius_m, w_m):
    """Fraction of a centred Gaussian beam of radius w caught by a circular aperture of radius a:
    eta_geo = 1 - exp(-2 a^2 / w^2) (integral of the Gaussian intensity over the disc)."""
    return -np.expm1(-2 * np.square(aperture_radius_m) / np.square(w_m))


def atmospheric_transmittance(t_zenith, elevation_rad):
    """T = T_zen^(1 / sin(elevation)): plane-parallel atmosphere, the air mass grows as
    1/sin(e) (valid above ~10-15 degrees, where the Earth's curvature does not matter)."""
    return np.power(t_zenith, 1.0 / np.sin(elevation_rad))


def link_efficiency(length_km, elevation_rad, divergence_rad, aperture_radius_m,
                    jitter_rad=0.0, t_zenith=1.0, eta_fixed=1.0, waist_m=0.0):
    """Transmittance of a free-space link: eta_geo(a, w_lt(L)) * T_zen^(1/sin e) * eta_fixed,
    where ``eta_fixed`` lumps the receiver optics and the detector (range-independent)."""
    w = pointing_broadened_radius(beam_radius(length_km, divergence_rad, waist_m), jitter_rad,
                                  length_km)
    return (geometric_efficiency(aperture_radius_m, w)
            * atmospheric_transmittance(t_zenith, elevation_rad) * eta_fixed)


def loss_db(efficiency):
    """Loss in dB of a transmittance: -10 log10(eta)."""
    return -10 * np.log10(efficiency)
