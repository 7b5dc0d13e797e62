"""Qubits in flight: the path model against a Monte Carlo of single payloads (survival, delay
lines, late decisions, drift, compensation, Raman depolarisation) within 4 standard errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import flight, raman
from emulator.physics import polarisation as pol
from emulator.physics import states as st
from emulator.physics.channels import FIBRE_GROUP_DELAY_S_PER_KM, transmittance

# source -> r1 -> r2 -> r3 -> destination: four fibres, three routers' delay lines
PATH = [
    flight.Hop(5.0, 0.25, drift_rad2_per_s=0.2, noise_photons=0.02, compensated=True,
               estimation_sigma_rad=0.1, header_lag_s=0.5, switch_budget_us=50,
               delay_line_db_per_us=0.01),
    flight.Hop(12.0, 0.2, drift_rad2_per_s=0.05, noise_photons=0.05, switch_budget_us=40,
               delay_line_db_per_us=0.02),
    flight.Hop(3.0, 0.3, drift_rad2_per_s=0.5, compensated=True,
               estimation_sigma_rad=float(pol.tomography_sigma(200)), switch_budget_us=30,
               delay_line_db_per_us=0.01),
    flight.Hop(8.0, 0.2, drift_rad2_per_s=0.1, noise_photons=0.1),
]
LATE = [0.05, 0.0, 0.2, 0.0]
T_SEND, ETA_DET = 2.0, 0.6


def test_delay_line_and_late_fraction():
    survival, late = flight.delay_line(50.0, 0.02, [10.0, 50.0, 51.0])
    assert survival == pytest.approx(10 ** (-0.1))
    assert late.tolist() == [False, False, True]
    assert flight.late_fraction([10, 20, 30, 40], 25) == 0.5
    assert flight.late_fraction([], 25) == 0.0


def test_single_lossy_hop_without_noise():
    hop = flight.Hop(25.0, 0.2)
    m = flight.path_model([hop])
    assert m.delivered == pytest.approx(float(transmittance(25.0, 0.2)))
    assert m.lost_in_fibre == pytest.approx(1 - m.delivered)
    assert (m.late, m.shrink, m.fidelity, m.pair_fidelity) == (0.0, 1.0, 1.0, 1.0)
    assert m.delay_s == pytest.approx(25.0 * FIBRE_GROUP_DELAY_S_PER_KM)
    with pytest.raises(ValueError):
        flight.path_model([hop], late=[0.1, 0.2])


def test_model_bookkeeping_and_noise_downstream():
    m = flight.path_model(PATH, T_SEND, ETA_DET, LATE)
    assert m.delivered + m.lost_in_fibre + m.late == pytest.approx(1.0)
    assert m.delay_s == pytest.approx(28.0 * FIBRE_GROUP_DELAY_S_PER_KM + 120e-6)
    # the first hop's noise crosses its spool, three fibres and two more spools
    t = [float(transmittance(h.length_km, h.attenuation_db_per_km)) for h in PATH]
    s = [flight.delay_line(h.switch_budget_us, h.delay_line_db_per_us)[0] for h in PATH]
    a0 = s[0] * t[1] * s[1] * t[2] * s[2] * t[3]
    expected = 0.02 * a0 + 0.05 * s[1] * t[2] * s[2] * t[3] + 0.1
    assert flight.noise_at_destination(PATH) == pytest.approx(expected)
    p = flight.hop_depolarising(PATH, ETA_DET)
    assert 1 - np.prod([1 - x for x in p]) == pytest.approx(m.depolarising)
    assert m.depolarising == pytest.approx(1 - math.exp(-ETA_DET * expected / 2))


def test_compensation_beats_drift_and_a_campus_link_keeps_q_chip_fidelity():
    slow = [flight.Hop(1.0, drift_rad2_per_s=0.1, compensated=c, estimation_sigma_rad=0.05,
                       header_lag_s=1e-6) for c in (False, True)]
    off, on = (flight.path_model([h], t_since_calibration_s=60.0) for h in slow)
    assert off.fidelity < 0.6 < 0.99 < on.fidelity
    assert on.fidelity == pytest.approx(1 - 0.05**2 / 2, abs=1e-4)  # 1 - E theta^2/6
    # ~1 km of campus fibre in two spans, a router each side, 1 mW of classical light each
    # way (rho 3e-9 /(km nm), 0.8 nm filter, 1 ns gate), a polarimeter good to 0.1 rad
    noise = float(raman.noise_photons(1e-3, 1e-3, 3e-9, 0.8, 0.5, 0.4, 1550.0, 1e-9, 1.0))
    campus = [flight.Hop(0.5, 0.4, 0.1, noise, True, 0.1, 1e-6, switch_budget_us=20),
              flight.Hop(0.5, 0.4, 0.1, noise, True, 0.1, 1e-6)]
    assert flight.path_model(campus, 600.0, eta_det=0.8).pair_fidelity >= 0.97


def test_a_router_slower_than_its_budget_loses_everything_as_late():
    hops = [flight.Hop(1.0, switch_budget_us=20), flight.Hop(1.0)]
    slow = flight.late_fraction(np.full(100, 35.0), 20.0)
    fast = flight.late_fraction(np.full(100, 35.0 * 0.05), 20.0)  # time_scale = 0.05
    assert flight.path_model(hops, late=[slow, 0.0]).delivered == 0.0
    assert flight.path_model(hops, late=[fast, 0.0]).late == 0.0


def test_path_model_against_single_payload_monte_carlo():
    rng = np.random.default_rng(21)
    n = 40_000
    model = flight.path_model(PATH, T_SEND, ETA_DET, LATE)

    # fates: fibre, spool, late, hop by hop
    alive = np.ones(n, bool)
    lost = np.zeros(n, bool)
    late = np.zeros(n, bool)
    for hop, share in zip(PATH, LATE):
        t = float(transmittance(hop.length_km, hop.attenuation_db_per_km))
        spool, _ = flight.delay_line(hop.switch_budget_us, hop.delay_line_db_per_us)
        dies = alive & (rng.random(n) >= t * spool)
        lost |= dies
        alive &= ~dies
        slow = alive & (rng.random(n) < share)
        late |= slow
        alive &= ~slow
    for counts, p in ((alive, model.delivered), (lost, model.lost_in_fibre),
                      (late, model.late)):
        assert abs(counts.mean() - p) < 4 * math.sqrt(p * (1 - p) / n)

    # fidelity of delivered payloads: independent fibres per payload, the daemon's transit
    m = 3000
    p_dep = flight.hop_depolarising(PATH, ETA_DET)
    walks = [pol.drift_walk([T_SEND - h.header_lag_s, T_SEND], h.drift_rad2_per_s, rng,
                            walks=m) for h in PATH]
    estimates = [pol.gaussian_estimate(w[:, 0], h.estimation_sigma_rad, rng) if h.compensated
                 else None for h, w in zip(PATH, walks)]
    states_in = pol.su2(rng.normal(0, 3, (m, 3))) @ st.ket("0")
    fid, pair = np.empty(m), np.empty(m)
    bell = st.density(st.bell_state(0))
    for k in range(m):
        rho, rho2 = st.density(states_in[k]), bell
        for h, w, est, p in zip(PATH, walks, estimates, p_dep):
            u_hat = None if est is None else est[k]
            rho = flight.transit(rho, 0, w[k, 1], p, u_hat)
            rho2 = flight.transit(rho2, 1, w[k, 1], p, u_hat)
        fid[k] = st.fidelity(rho, states_in[k])
        pair[k] = st.fidelity(rho2, st.bell_state(0))
    for samples, expected in ((fid, model.fidelity), (pair, model.pair_fidelity)):
        se = samples.std(ddof=1) / math.sqrt(m)
        assert abs(samples.mean() - expected) < 4 * se, (samples.mean(), expected, se)
    assert 0.5 < model.fidelity < 0.95  # the test would see a wrong drift or noise term


def test_run_to_run_spread_of_the_mean_fidelity():
    """Packets of one run share the uncompensated walk: the spread of a run's mean fidelity
    follows ``fidelity_spread``, much wider than independent packets would give."""
    rng = np.random.default_rng(22)
    runs, times = 4000, np.linspace(0.5, 10.0, 20)
    hops = [flight.Hop(2.0, drift_rad2_per_s=0.3, noise_photons=0.05),
            flight.Hop(2.0, drift_rad2_per_s=0.5, compensated=True, estimation_sigma_rad=0.3,
                       header_lag_s=0.01)]
    walk = pol.drift_walk(times, 0.3, rng, walks=runs)  # (runs, packets, 2, 2)
    lag = pol.drift_walk([0.01], 0.5, rng, walks=runs * times.size)[:, 0]
    error = pol.su2(rng.normal(0, 0.3, (runs * times.size, 3)))
    total = (lag @ error).reshape(runs, times.size, 2, 2) @ walk
    trace_r = np.abs(np.trace(total, axis1=-2, axis2=-1)) ** 2 - 1  # Tr R = |Tr U|^2 - 1
    keep = math.exp(-flight.noise_at_destination(hops) / 2)
    for scale, offset, sd_model, model in (
        (keep / 6, 0.5, flight.fidelity_spread(hops, times)[0], "fidelity"),
        (keep / 4, 0.25, flight.fidelity_spread(hops, times)[1], "pair_fidelity"),
    ):
        run_means = offset + scale * trace_r.mean(axis=1)
        expected = getattr(flight.flow_model(hops, times), model)
        assert expected == pytest.approx(
            np.mean([getattr(flight.path_model(hops, t), model) for t in times]))
        assert abs(run_means.mean() - expected) < 4 * run_means.std() / math.sqrt(runs)
        # standard error of the sample std from the fourth central moment
        dev = run_means - run_means.mean()
        var, m4 = np.mean(dev**2), np.mean(dev**4)
        se_sd = math.sqrt((m4 - var**2) / runs) / (2 * math.sqrt(var))
        assert abs(math.sqrt(var) - sd_model) < 4 * se_sd, (math.sqrt(var), sd_model, se_sd)
    flow = flight.flow_model(hops, times)
    assert (flow.fidelity_spread, flow.pair_fidelity_spread) == flight.fidelity_spread(hops, times)
    with pytest.raises(ValueError):
        flight.flow_model(hops, [])
    # independent packets would claim a spread ~3 times smaller
    naive = math.sqrt(np.mean([flight.fidelity_spread(hops, [t])[0] ** 2 for t in times])
                      / times.size)
    assert flight.fidelity_spread(hops, times)[0] > 2 * naive
