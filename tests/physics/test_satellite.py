"""Satellite pass geometry and loss; the Micius parameter set against issue 11's figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import satellite as sat
from emulator.physics.free_space import loss_db


def test_range_and_elevation_geometry():
    h = 500.0
    assert sat.slant_range(h, math.pi / 2) == pytest.approx(h)
    horizon = math.sqrt((sat.EARTH_RADIUS_KM + h) ** 2 - sat.EARTH_RADIUS_KM**2)
    assert sat.slant_range(h, 0.0) == pytest.approx(horizon)  # 2573 km
    e = np.radians(np.linspace(5, 90, 18))
    assert np.allclose(sat.elevation(h, sat.slant_range(h, e)), e, atol=1e-10)
    assert math.degrees(sat.elevation(h, 645.0)) == pytest.approx(49.0, abs=0.1)
    assert math.degrees(sat.elevation(h, 1200.0)) == pytest.approx(19.8, abs=0.1)
    period = 2 * math.pi / sat.orbital_rate(h)
    assert period / 60 == pytest.approx(94.5, abs=0.2)  # a 500 km LEO orbit
    assert sat.light_time(1200.0) == pytest.approx(4.003e-3, rel=1e-3)


def test_pass_is_symmetric_and_lasts_about_five_minutes_above_1200_km():
    t = np.linspace(-400, 400, 8001)
    p = sat.pass_geometry(500.0, 645.0, t, min_elevation_rad=math.radians(10))
    assert p.range_km.min() == pytest.approx(645.0)
    assert np.allclose(p.range_km, p.range_km[::-1])
    # consistent with the static relation between range and elevation
    assert np.allclose(p.elevation_rad, sat.elevation(500.0, p.range_km), atol=1e-9)
    within = t[p.range_km <= 1200.0]
    assert 240 < within[-1] - within[0] < 330  # Liao et al.: ~5 min from 1200 km to 645 and back
    assert not p.visible[0] and p.visible[4000]
    with pytest.raises(ValueError):
        sat.pass_geometry(500.0, 400.0, t)


def test_micius_loss_at_the_published_ranges():
    """Within 1 dB of ~30 dB at 645 km and ~40 dB at 1200 km (two fitted constants: a check of
    the fit and the geometry, not a prediction), and monotone in range between."""
    t = np.linspace(-200, 200, 4001)
    p = sat.pass_geometry(sat.MICIUS_ALTITUDE_KM, 645.0, t, math.radians(10))
    loss = sat.pass_loss_db(p, sat.MICIUS_DOWNLINK)
    assert loss[2000] == pytest.approx(30.0, abs=1.0)
    at_1200 = np.interp(1200.0, p.range_km[:2001][::-1], loss[:2001][::-1])
    assert at_1200 == pytest.approx(40.0, abs=1.0)
    order = np.argsort(p.range_km)
    assert np.all(np.diff(loss[order]) >= -1e-9)
    # diffraction alone: 20 log10(1200/645) = 5.4 dB of the difference
    optics = sat.MICIUS_DOWNLINK
    bare = sat.Optics(optics.divergence_rad, optics.aperture_radius_m)
    e = sat.elevation(500.0, np.array([645.0, 1200.0]))
    pts = sat.PassPoint(np.zeros(2), np.array([645.0, 1200.0]), e, np.ones(2, bool))
    d = np.diff(sat.pass_loss_db(pts, bare))[0]
    assert d == pytest.approx(20 * math.log10(1200 / 645), abs=0.1)
    assert loss_db(optics.eta_fixed) == pytest.approx(12.9, abs=0.1)


def test_interpolated_loss_table():
    loss = sat.interpolate_loss_db([-1.0, 0.0, 5.0, 10.0, 11.0], [0.0, 10.0], [40.0, 30.0])
    assert loss.tolist() == [math.inf, 40.0, 35.0, 30.0, math.inf]
    with pytest.raises(ValueError):
        sat.interpolate_loss_db([0.0], [0.0, 0.0], [1.0, 2.0])
    p = sat.pass_geometry(500.0, 645.0, [0.0, 120.0], math.radians(40))
    overhead, low = sat.pass_loss_db(p, sat.MICIUS_DOWNLINK)
    assert math.isfinite(overhead) and math.isinf(low)  # 49 deg visible, ~22 deg below 40


XINGLONG = (math.radians(40.4), math.radians(117.6))
SUN_SYNCHRONOUS = math.radians(97.4)


@pytest.mark.parametrize("ascending", [True, False])
def test_station_pass_without_rotation_is_the_cross_track_pass(ascending):
    """Station, inclination and node on a non-rotating Earth reduce to the closest-range model
    exactly (same beta): range and elevation agree to 1e-9 km / rad over the whole pass."""
    node = sat.node_longitude(500.0, 645.0, SUN_SYNCHRONOUS, *XINGLONG, ascending=ascending)
    orbit = sat.Orbit(500.0, SUN_SYNCHRONOUS, node, *XINGLONG, rotating=False)
    t = np.linspace(-400, 400, 801)
    got, want = sat.station_pass(orbit, t, math.radians(10)), sat.pass_geometry(500.0, 645.0, t)
    assert np.allclose(got.range_km, want.range_km, atol=1e-9, rtol=0)
    assert np.allclose(got.elevation_rad, want.elevation_rad, atol=1e-9, rtol=0)
    assert math.degrees(sat.highest_elevation(orbit)) == pytest.approx(49.0, abs=0.1)
    # northbound (ascending) or southbound at the nearest point: the satellite's latitude rises
    p, q = sat._plane(orbit)
    g = np.array([math.cos(XINGLONG[0]) * math.cos(XINGLONG[1]),
                  math.cos(XINGLONG[0]) * math.sin(XINGLONG[1]), math.sin(XINGLONG[0])])
    u0 = math.atan2(g @ q, g @ p)
    assert (math.cos(u0) > 0) == ascending


def test_station_pass_with_rotation_follows_the_turning_earth():
    """With the Earth turning (0.35 km/s at 40 N against 7.6 km/s), the closest range and its
    time move by little; elevation keeps the static range relation (spherical Earth)."""
    node = sat.node_longitude(500.0, 645.0, SUN_SYNCHRONOUS, *XINGLONG)
    orbit = sat.Orbit(500.0, SUN_SYNCHRONOUS, node, *XINGLONG)
    t = np.linspace(-200, 200, 4001)
    p = sat.station_pass(orbit, t, math.radians(10))
    assert p.range_km.min() == pytest.approx(645.0, abs=1.0)
    assert abs(t[p.range_km.argmin()]) < 5.0
    assert np.allclose(p.elevation_rad, sat.elevation(500.0, p.range_km), atol=1e-9)
    within = t[p.range_km <= 1200.0]
    assert 240 < within[-1] - within[0] < 330
    # a scalar time gives scalars; the loss at the published ranges still holds
    assert np.shape(sat.station_pass(orbit, 0.0).range_km) == ()
    loss = sat.pass_loss_db(p, sat.MICIUS_DOWNLINK)
    assert loss.min() == pytest.approx(30.0, abs=1.0)
    assert np.interp(1200.0, p.range_km[:2000][::-1], loss[:2000][::-1]) == pytest.approx(
        40.0, abs=1.0)
    with pytest.raises(ValueError, match="no orbit"):
        sat.node_longitude(500.0, 645.0, math.radians(10.0), *XINGLONG)  # track too far south
