"""Polarisation drift and header-based compensation: exact identities, and Monte Carlo means
within 4 standard errors (estimated from the same samples) of the closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import polarisation as pol
from emulator.physics import states as st

EXACT = 1e-12
N_MC = 20_000


def within(samples, expected, sigmas=4.0, bias=0.0):
    samples = np.asarray(samples, dtype=float)
    se = samples.std(ddof=1) / math.sqrt(samples.size)
    assert abs(samples.mean() - expected) <= sigmas * se + bias, (samples.mean(), expected, se)


def test_su2_matches_states_rot_and_bloch_convention():
    rng = np.random.default_rng(0)
    for w in rng.normal(0, 2, (20, 3)):
        theta = float(np.linalg.norm(w))
        assert np.allclose(pol.su2(w), st.rot(w / theta, theta), atol=EXACT)
    assert np.allclose(pol.su2(np.zeros(3)), st.I2)
    # rotation by theta about z takes the Bloch x axis to (cos, sin, 0): right-handed
    r = pol.bloch_rotation(st.rz(0.3))
    assert np.allclose(r @ [1, 0, 0], [math.cos(0.3), math.sin(0.3), 0], atol=EXACT)


def test_bloch_rotation_round_trip_including_near_pi():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (500, 3))
    w[250:] *= (math.pi - 1e-9) / np.linalg.norm(w[250:], axis=1)[:, None]  # theta ~ pi
    u = pol.su2(w)
    r = pol.bloch_rotation(u)
    assert np.allclose(r @ np.swapaxes(r, -1, -2), np.eye(3), atol=1e-12)
    back = pol.su2_from_bloch(r)
    assert np.allclose(pol.bloch_rotation(back), r, atol=1e-12)
    # equal up to sign: |Tr(U^dagger U')| = 2
    assert np.allclose(np.abs(np.trace(pol.residual(u, back), axis1=1, axis2=2)), 2, atol=1e-12)
    norm = np.linalg.norm(w[:250], axis=1)
    folded = np.where(norm > math.pi, 2 * math.pi - norm, norm)  # angle on the Bloch sphere
    assert np.allclose(pol.rotation_angle(u[:250]), folded, atol=1e-7)


@pytest.mark.parametrize("theta", [0.0, 0.4, 1.3, 2.5, math.pi])
def test_fidelity_of_a_rotation(theta):
    u = st.rot((0.3, -0.5, 0.8), theta)
    # the six Bloch axis states are a 2-design: their mean is the Haar mean of |<psi|U|psi>|^2
    fids = [abs(np.vdot(st.ket(s), u @ st.ket(s))) ** 2 for s in "01+-rl"]
    assert np.mean(fids) == pytest.approx(pol.average_fidelity(theta), abs=EXACT)
    assert pol.average_fidelity(theta) == pytest.approx((1 + 2 * math.cos(theta / 2) ** 2) / 3)
    rho = st.apply_gate(st.density(st.bell_state(0)), u, [1])
    assert st.fidelity(rho, st.bell_state(0)) == pytest.approx(pol.pair_fidelity(theta), abs=1e-9)


def test_gaussian_shrink_against_monte_carlo_and_its_inverse():
    rng = np.random.default_rng(2)
    for s in (0.05, 0.3, 0.9):
        theta = np.linalg.norm(rng.normal(0, s, (N_MC, 3)), axis=1)
        within((1 + 2 * np.cos(theta)) / 3, pol.gaussian_shrink(s))
    lam = np.array([0.999, 0.9, 0.5, 0.1])
    s2 = pol._gaussian_variance_for_shrink(lam)
    assert np.allclose(pol.gaussian_shrink(np.sqrt(s2)), lam, atol=1e-12)
    # small steps: s^2 = D dt/3 to first order, i.e. E theta^2 = D dt
    assert pol._gaussian_variance_for_shrink(math.exp(-1e-4 / 3)) == pytest.approx(1e-4 / 3, 1e-3)


def test_walk_mean_fidelity_follows_the_heat_kernel_decay():
    rng = np.random.default_rng(3)
    d, times = 0.5, np.array([0.05, 0.5, 2.0, 6.0])
    u = pol.drift_walk(times, d, rng, walks=N_MC)
    assert u.shape == (N_MC, 4, 2, 2)
    theta = pol.rotation_angle(u)
    f_avg, f_pair = pol.fidelity_from_shrink(pol.drift_shrink(d, times))
    for k in range(times.size):
        within(pol.average_fidelity(theta[:, k]), f_avg[k])
        within(pol.pair_fidelity(theta[:, k]), f_pair[k])
    assert f_avg[-1] == pytest.approx((1 + math.exp(-1.0)) / 2)
    # the mean squared angle grows as D t while the walk stays small
    theta_small = pol.rotation_angle(pol.drift_walk([0.004], d, rng, walks=N_MC))[:, 0]
    within(theta_small**2, d * 0.004, bias=(d * 0.004) ** 2)


def test_walk_is_consistent_across_sampling_grids_and_validates_input():
    rng = np.random.default_rng(4)
    d = 2.0
    coarse = pol.rotation_angle(pol.drift_walk([1.0], d, rng, walks=N_MC))[:, 0]
    fine = pol.rotation_angle(pol.drift_walk(np.linspace(0.01, 1.0, 100), d, rng,
                                             walks=N_MC))[:, -1]
    expected = pol.fidelity_from_shrink(pol.drift_shrink(d, 1.0))[0]
    within(pol.average_fidelity(coarse), expected)
    within(pol.average_fidelity(fine), expected)
    one = pol.drift_walk([0.0, 0.0, 0.3], d, rng)
    assert one.shape == (3, 2, 2) and np.allclose(one[0], st.I2)
    assert np.allclose(one[2] @ np.conj(one[2].T), st.I2, atol=1e-12)
    assert np.allclose(pol.drift_walk([5.0], 0.0, rng)[0], st.I2)
    with pytest.raises(ValueError):
        pol.drift_walk([1.0, 0.5], d, rng)
    with pytest.raises(ValueError):
        pol.drift_walk([1.0], -1.0, rng)
    with pytest.raises(ValueError):
        pol.drift_walk([1.0], d, rng, max_step=2.0)
    # the daemon's incremental form: two steps of 0.5 s give the same law as one of 1 s
    u = pol.drift_step(pol.drift_step(np.broadcast_to(st.I2, (N_MC, 2, 2)), 0.5, d, rng), 0.5,
                       d, rng)
    within(pol.average_fidelity(pol.rotation_angle(u)), expected)
    with pytest.raises(ValueError):
        pol.drift_step(st.I2, -1.0, d, rng)


@pytest.mark.parametrize("sigma", [0.02, 0.1, 0.4])
def test_gaussian_compensation_residual(sigma):
    rng = np.random.default_rng(5)
    u = pol.haar_su2(rng, N_MC)
    theta = pol.rotation_angle(pol.residual(u, pol.gaussian_estimate(u, sigma, rng)))
    f_avg, f_pair = pol.fidelity_from_shrink(pol.compensated_shrink(sigma))
    within(pol.average_fidelity(theta), f_avg)
    within(pol.pair_fidelity(theta), f_pair)
    within(theta**2, 3 * sigma**2, bias=sigma**4)
    # the residual angle's distribution: Maxwell, CDF checked at its quartiles
    for q in (0.25, 0.5, 0.75):
        x = np.quantile(theta, q)
        assert abs(pol.gaussian_angle_cdf(x, sigma) - q) < 4 * math.sqrt(q * (1 - q) / N_MC)


def test_compensation_with_header_to_payload_lag():
    """The header is read at t, the payload crosses at t + lag: the drift in between stays."""
    rng = np.random.default_rng(6)
    d, t, lag, sigma = 1.0, 3.0, 0.05, 0.05
    u = pol.drift_walk([t, t + lag], d, rng, walks=N_MC)
    est = pol.gaussian_estimate(u[:, 0], sigma, rng)
    theta = pol.rotation_angle(pol.residual(u[:, 1], est))
    within(pol.average_fidelity(theta),
           pol.fidelity_from_shrink(pol.compensated_shrink(sigma, d, lag))[0])
    uncorrected = pol.fidelity_from_shrink(pol.drift_shrink(d, t + lag))[0]
    assert pol.fidelity_from_shrink(pol.compensated_shrink(sigma, d, lag))[0] > uncorrected + 0.2


@pytest.mark.parametrize("shots", [100, 1000])
def test_tomography_residual_first_order(shots):
    rng = np.random.default_rng(7)
    u = pol.haar_su2(rng, N_MC)
    theta = pol.rotation_angle(pol.residual(u, pol.tomography_estimate(u, shots, rng)))
    # first order in 1/N: the neglected terms are O(1/N^2)
    bias = 5.0 / shots**2
    within(theta**2, pol.tomography_residual_msq(shots), bias=bias)
    f_model = pol.fidelity_from_shrink(pol.gaussian_shrink(pol.tomography_sigma(shots)))[0]
    within(pol.average_fidelity(theta), f_model, bias=bias)
    for fixed in (st.I2, pol.su2([0.4, -1.1, 0.7])):
        uf = np.broadcast_to(fixed, (N_MC, 2, 2))
        theta = pol.rotation_angle(pol.residual(uf, pol.tomography_estimate(uf, shots, rng)))
        within(theta**2, float(pol.tomography_residual_msq(shots, fixed)), bias=bias)
    assert pol.tomography_residual_msq(shots, st.I2) == pytest.approx(2.5 / shots)
    with pytest.raises(ValueError):
        pol.tomography_estimate(u, 0, rng)


def test_rank_two_decay_of_the_walk_and_of_the_gaussian_error():
    """chi_2 = 1 + 2 cos theta + 2 cos 2 theta: what the variance of a run's fidelity needs."""
    rng = np.random.default_rng(8)
    d, times = 0.8, np.array([0.3, 1.5])
    theta = pol.rotation_angle(pol.drift_walk(times, d, rng, walks=N_MC))
    for k, t in enumerate(times):
        within((1 + 2 * np.cos(theta[:, k]) + 2 * np.cos(2 * theta[:, k])) / 5,
               pol.drift_shrink(d, t, rank=2))
    theta = np.linalg.norm(rng.normal(0, 0.4, (N_MC, 3)), axis=1)
    within((1 + 2 * np.cos(theta) + 2 * np.cos(2 * theta)) / 5, pol.gaussian_shrink(0.4, 2))
    assert pol.gaussian_shrink(0.3, 1) == pytest.approx((1 + 2 * math.exp(-0.045) * 0.91) / 3)


def test_haar_su2_moments():
    """Haar on SU(2): E|Tr U|^2 = 1 (chi_1/2 is irreducible) and E Tr R = 0."""
    rng = np.random.default_rng(9)
    u = pol.haar_su2(rng, N_MC)
    within(np.abs(np.trace(u, axis1=1, axis2=2)) ** 2, 1.0)
    within(np.trace(pol.bloch_rotation(u), axis1=1, axis2=2), 0.0)
    assert np.allclose(u @ np.conj(np.swapaxes(u, 1, 2)), st.I2, atol=1e-12)
