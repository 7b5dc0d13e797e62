"""Satellite pass geometry (range and elevation against time) and the resulting link loss,
or a loss table (time, dB) interpolated; delay of the matching classical link from the range.

Circular orbit, spherical Earth (R = 6371 km, GM = 398600.4418 km^3/s^2). Two geometries:
``pass_geometry``, a station at a fixed angular distance ``beta`` from the orbital plane
(non-rotating Earth: the rotation shifts a LEO pass by a few percent in time), and
``station_pass``, a station at latitude/longitude under an orbit of given inclination and
ascending node, with the Earth turning under it. Units: km, s, rad. Loss model in
``free_space``; Micius numbers and their sources: docs/physics.md, "Free-space and satellite
links".
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from emulator.physics import free_space

EARTH_RADIUS_KM = 6371.0
EARTH_GM_KM3_S2 = 398_600.4418
LIGHT_SPEED_KM_S = 299_792.458
EARTH_ROTATION_RAD_S = 7.2921150e-5  # sidereal rate (IERS)


def slant_range(altitude_km, elevation_rad, earth_radius_km=EARTH_RADIUS_KM):
    """Station-satellite distance at elevation e: L = sqrt((R + h)^2 - R^2 cos^2 e) - R sin e
    (law of cosines in the Earth-centre / station / satellite triangle)."""
    r, e = earth_radius_km, np.asarray(elevation_rad)
    return np.sqrt(np.square(r + altitude_km) - np.square(r * np.cos(e))) - r * np.sin(e)


def elevation(altitude_km, range_km, earth_radius_km=EARTH_RADIUS_KM):
    """Elevation seen from the station at slant range L: sin e = ((R + h)^2 - R^2 - L^2)/(2 R L)
    (inverse of ``slant_range``)."""
    r, big_l = earth_radius_km, np.asarray(range_km, dtype=np.float64)
    return np.arcsin((np.square(r + altitude_km) - r * r - np.square(big_l)) / (2 * r * big_l))


def orbital_rate(altitude_km, earth_radius_km=EARTH_RADIUS_KM):
    """Angular rate of a circular orbit, omega = sqrt(GM / (R + h)^3) in rad/s."""
    return np.sqrt(EARTH_GM_KM3_S2 / np.power(earth_radius_km + altitude_km, 3))


class PassPoint(msgspec.Struct, frozen=True):
    """Geometry of a pass at given times (arrays): slant range (km), elevation (rad), and
    whether the satellite is above the minimum elevation."""

    t_s: np.ndarray
    range_km: np.ndarray
    elevation_rad: np.ndarray
    visible: np.ndarray


def pass_geometry(altitude_km: float, closest_range_km: float, t_s,
                  min_elevation_rad: float = 0.0) -> PassPoint:
    """Range and elevation at times ``t_s`` (0 = closest approach) of a pass whose smallest
    range is ``closest_range_km``: the station sits beta from the orbital plane, with beta the
    Earth-centre angle at that range; the central angle to the sub-satellite point is
    cos(gamma) = cos(beta) cos(omega t) and L^2 = R^2 + (R + h)^2 - 2 R (R + h) cos(gamma)."""
    r = EARTH_RADIUS_KM
    rs = r + altitude_km
    if not altitude_km <= closest_range_km:
        raise ValueError("the closest range cannot be below the altitude")
    cos_beta = (r * r + rs * rs - closest_range_km**2) / (2 * r * rs)
    t = np.asarray(t_s, dtype=np.float64)
    cos_gamma = cos_beta * np.cos(orbital_rate(altitude_km) * t)
    big_l = np.sqrt(r * r + rs * rs - 2 * r * rs * cos_gamma)
    elev = np.arcsin((rs * cos_gamma - r) / big_l)
    return PassPoint(t, big_l, elev, elev >= min_elevation_rad)


class Orbit(msgspec.Struct, frozen=True):
    """A circular orbit and a ground station, angles in rad: orbit altitude, inclination,
    longitude of the ascending node at pass time 0 (Earth-fixed), station latitude and
    longitude; ``rotating``: the Earth turns under the orbit at ``EARTH_ROTATION_RAD_S``."""

    altitude_km: float
    inclination_rad: float
    node_lon_rad: float
    lat_rad: float
    lon_rad: float
    rotating: bool = True


def _station(o: Orbit, t: np.ndarray) -> np.ndarray:
    """Unit vectors to the station at times t (inertial frame = Earth-fixed at t = 0)."""
    lon = o.lon_rad + (EARTH_ROTATION_RAD_S * t if o.rotating else 0.0 * t)
    c = math.cos(o.lat_rad)
    return np.stack([c * np.cos(lon), c * np.sin(lon), np.full_like(lon, math.sin(o.lat_rad))])


def _plane(o: Orbit) -> tuple[np.ndarray, np.ndarray]:
    """In-plane unit vectors: p to the ascending node, q 90 degrees further along the orbit."""
    cn, sn, ci, si = (math.cos(o.node_lon_rad), math.sin(o.node_lon_rad),
                      math.cos(o.inclination_rad), math.sin(o.inclination_rad))
    return np.array([cn, sn, 0.0]), np.array([-ci * sn, ci * cn, si])


def cross_track_angle(o: Orbit) -> float:
    """beta at pass time 0: the station's angle from the orbital plane, sin beta = n . g with
    n = p x q the orbit normal."""
    p, q = _plane(o)
    return float(math.asin(np.clip(np.cross(p, q) @ _station(o, np.zeros(1))[:, 0], -1, 1)))


def node_longitude(altitude_km: float, closest_range_km: float, inclination_rad: float,
                   lat_rad: float, lon_rad: float, ascending: bool = True) -> float:
    """Ascending-node longitude putting the non-rotating closest approach at
    ``closest_range_km``: sin beta = sin i cos(lat) sin(node - lon) + cos i sin(lat), station
    east of the track (beta > 0); ``ascending``: the pass on the northbound half."""
    r, rs = EARTH_RADIUS_KM, EARTH_RADIUS_KM + altitude_km
    beta = math.acos((r * r + rs * rs - closest_range_km**2) / (2 * r * rs))
    x = ((math.sin(beta) - math.cos(inclination_rad) * math.sin(lat_rad))
         / (math.sin(inclination_rad) * math.cos(lat_rad)))
    if abs(x) > 1:
        raise ValueError("no orbit of this inclination passes that close to the station")
    d = math.asin(x)
    for node in ((d, math.pi - d) if ascending else (math.pi - d, d)):
        o = Orbit(altitude_km, inclination_rad, lon_rad + node, lat_rad, lon_rad, False)
        p, _ = _plane(o)  # northbound at the nearest point u0: cos u0 > 0, i.e. g . p > 0
        if (p @ _station(o, np.zeros(1))[:, 0] > 0) == ascending:
            return float(math.remainder(lon_rad + node, 2 * math.pi))
    return float(math.remainder(lon_rad + d, 2 * math.pi))  # pragma: no cover - one matches


def highest_elevation(o: Orbit) -> float:
    """Elevation at the pass's closest approach on a non-rotating Earth (rad): the station at
    beta from the plane sees the satellite at range L(beta), elevation from ``elevation``."""
    r, rs = EARTH_RADIUS_KM, EARTH_RADIUS_KM + o.altitude_km
    big_l = math.sqrt(r * r + rs * rs - 2 * r * rs * math.cos(cross_track_angle(o)))
    return float(elevation(o.altitude_km, big_l))


def station_pass(o: Orbit, t_s, min_elevation_rad: float = 0.0) -> PassPoint:
    """Range and elevation at times ``t_s`` from the station. Pass time 0: the satellite at
    the point of its orbit nearest the station (its closest approach on a non-rotating Earth),
    argument of latitude u0 = atan2(g . q, g . p); then u = u0 + omega t. Range L = |s - g|,
    sin(elevation) = (s - g) . g_hat / L."""
    t = np.atleast_1d(np.asarray(t_s, dtype=np.float64))
    p, q = _plane(o)
    g0 = _station(o, np.zeros(1))[:, 0]
    u = math.atan2(g0 @ q, g0 @ p) + orbital_rate(o.altitude_km) * t
    sat = (EARTH_RADIUS_KM + o.altitude_km) * (np.outer(p, np.cos(u)) + np.outer(q, np.sin(u)))
    g = _station(o, t)
    d = sat - EARTH_RADIUS_KM * g
    big_l = np.sqrt(np.einsum("ij,ij->j", d, d))
    elev = np.arcsin(np.einsum("ij,ij->j", d, g) / big_l)
    shape = np.shape(t_s)
    big_l, elev = big_l.reshape(shape), elev.reshape(shape)
    return PassPoint(np.asarray(t_s, dtype=np.float64), big_l, elev, elev >= min_elevation_rad)


class Optics(msgspec.Struct, frozen=True):
    """A free-space link's optics: half-angle divergence (rad), receiver aperture radius (m),
    pointing jitter per axis (rad), zenith transmittance, range-independent efficiency
    (receiver optics and detector)."""

    divergence_rad: float
    aperture_radius_m: float
    jitter_rad: float = 0.0
    t_zenith: float = 1.0
    eta_fixed: float = 1.0


# Micius downlink to a 1 m telescope (Liao et al., Nature 549, 43 (2017)): ~500 km orbit,
# ~10 urad full-angle divergence. t_zenith and eta_fixed are FITTED so that the loss is 30 dB
# at 645 km and 40 dB at 1200 km (issue 11's reading of the paper): diffraction alone gives
# 20 log10(1200/645) = 5.4 dB of the 10 dB difference, the effective atmosphere (with
# turbulence) the rest. See docs/physics.md.
MICIUS_ALTITUDE_KM = 500.0
MICIUS_DOWNLINK = Optics(divergence_rad=5e-6, aperture_radius_m=0.5, t_zenith=0.516,
                         eta_fixed=0.0513)


def pass_loss_db(point: PassPoint, optics: Optics):
    """Link loss (dB) along a pass from ``free_space.link_efficiency`` at each point's range and
    elevation; +inf where the satellite is below the minimum elevation."""
    eta = free_space.link_efficiency(point.range_km, np.maximum(point.elevation_rad, 1e-9),
                                     optics.divergence_rad, optics.aperture_radius_m,
                                     optics.jitter_rad, optics.t_zenith, optics.eta_fixed)
    return np.where(point.visible, free_space.loss_db(eta), np.inf)


def interpolate_loss_db(t_s, table_t_s, table_db):
    """Loss at times ``t_s`` from a table of (time, dB) (e.g. a scenario's CSV): linear
    interpolation, +inf outside the table (no link before or after the pass)."""
    t = np.asarray(t_s, dtype=np.float64)
    table_t = np.asarray(table_t_s, dtype=np.float64)
    if table_t.ndim != 1 or table_t.size < 2 or np.any(np.diff(table_t) <= 0):
        raise ValueError("the loss table needs >= 2 strictly increasing times")
    inside = (t >= table_t[0]) & (t <= table_t[-1])
    return np.where(inside, np.interp(t, table_t, np.asarray(table_db, dtype=np.float64)),
                    np.inf)


def delay_schedule(geometry, fixed_s: float, step_s: float = 1.0,
                   span_s: float = 900.0) -> list[tuple[float, float]]:
    """[(t, fixed_s + L(t)/c)] every ``step_s`` for t in [0, span_s] from ``geometry(t)`` (a
    PassPoint of times), delays to 1 ps. Linear interpolation between 1 s points errs by
    L'' h^2 / 8 <= (v^2 / L_min) / 8 ~ 11 m at 645 km, 40 ns. A 500 km pass stays above the
    horizon for ~12 minutes: 15 cover any run of one."""
    t = np.arange(0.0, span_s + step_s / 2, step_s)
    delay = fixed_s + light_time(geometry(t).range_km)
    return [(float(a), round(float(b), 12)) for a, b in zip(t, delay, strict=True)]


def light_time(range_km):
    """One-way delay of the classical (and quantum) free-space link: L / c in s."""
    return np.asarray(range_km) / LIGHT_SPEED_KM_S
