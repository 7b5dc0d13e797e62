"""Polarisation drift of a fibre, U(t) a random walk on SU(2), and its compensation from the
reference polarisations a hybrid packet's header carries through the same fibre.

Pure numpy; randomness only through an explicit ``numpy.random.Generator``. Rotations are
SU(2) matrices ``U = exp(-i theta/2 n.sigma)`` (rotation by ``theta`` about ``n`` on the
Bloch sphere), stacked along leading axes. Times in s, angles in rad, D in rad^2/s.
Derivations and the models' conventions: docs/physics.md, "Polarisation drift".
"""

from __future__ import annotations

import math

import numpy as np

from emulator.physics.states import I2, X, Y, Z

Array = np.ndarray

_SIGMA = np.stack([X, Y, Z])  # (3, 2, 2)
# the two header reference polarisations: H (Bloch +z) and D (Bloch +x); two non-parallel
# references fix a rotation, one would leave the rotation about itself unseen
REFERENCES = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def su2(rotation_vectors) -> Array:
    """``exp(-i (omega.sigma)/2) = cos(|omega|/2) I - i sin(|omega|/2) n.sigma`` for rotation
    vectors ``omega = theta n`` of shape (..., 3) (rad); returns (..., 2, 2)."""
    w = np.asarray(rotation_vectors, dtype=np.float64)
    theta = np.linalg.norm(w, axis=-1)
    # sin(theta/2)/theta -> 1/2 as theta -> 0 (np.sinc(x) = sin(pi x)/(pi x))
    coef = 0.5 * np.sinc(theta / (2 * np.pi))
    gen = np.einsum("...k,kij->...ij", w * coef[..., None], _SIGMA)
    return np.cos(theta / 2)[..., None, None] * I2 - 1j * gen


def rotation_angle(u) -> Array:
    """Bloch-sphere rotation angle ``theta = 2 arccos(|Tr U|/2)`` in [0, pi] of SU(2) matrices
    (the sign of U, a global phase, does not matter)."""
    tr = np.abs(np.trace(np.asarray(u), axis1=-2, axis2=-1)) / 2
    return 2 * np.arccos(np.clip(tr, 0.0, 1.0))


def average_fidelity(theta):
    """Input-averaged state fidelity after an uncorrected rotation by ``theta``:
    ``F = (2 + cos theta)/3 = (1 + 2 cos^2(theta/2))/3``.

    Nielsen, Phys. Lett. A 303, 249 (2002): F = (d F_e + 1)/(d + 1) with the entanglement
    fidelity F_e = |Tr U|^2/d^2 = cos^2(theta/2), d = 2; equivalently the mean of
    (1 + r.Rr)/2 over Bloch vectors r on the sphere, <r.Rr> = Tr R/3 = (1 + 2 cos theta)/3.
    """
    return (2 + np.cos(theta)) / 3


def pair_fidelity(theta):
    """Fidelity with Phi+ of a Bell pair one of whose halves was rotated by ``theta``:
    ``F_e = |Tr U|^2/4 = cos^2(theta/2)`` (the entanglement fidelity above)."""
    return np.cos(np.asarray(theta) / 2) ** 2


def drift_shrink(diffusion_rad2_per_s, t_s, rank: int = 1):
    """Mean Bloch rotation of the walk after ``t`` s: ``E[R(t)] = lambda I``,
    ``lambda = exp(-D t/3)``; the averaged channel is depolarising with ``p = 1 - lambda``.

    Isotropic rotational Brownian motion: a rank-l tensor decays as exp(-l(l+1) D_r t)
    (Perrin 1934; Favro, Phys. Rev. 119, 53 (1960)); the Bloch vector is rank 1 and the
    convention E[theta^2] = D dt for small steps means D_r = D/6, so lambda = exp(-2 D_r t).
    ``rank`` l gives E[chi_l(R)]/(2l + 1) = exp(-l(l+1) D t/6) (used for variances; the sampled
    walk matches rank 1 exactly and higher ranks to O(D dt)).
    """
    return np.exp(-np.multiply(diffusion_rad2_per_s, t_s) * rank * (rank + 1) / 6)


def fidelity_from_shrink(shrink):
    """``(F_avg, F_pair) = ((1 + lambda)/2, (1 + 3 lambda)/4)`` of an isotropic (or
    input-averaged) channel whose mean Bloch rotation is ``lambda I``: both are linear in R,
    so they follow from ``average_fidelity`` / ``pair_fidelity`` with cos theta -> (3 lambda - 1)/2."""
    shrink = np.asarray(shrink, dtype=np.float64)
    return (1 + shrink) / 2, (1 + 3 * shrink) / 4


def gaussian_shrink(sigma_rad, rank: int = 1):
    """``lambda = E[(1 + 2 cos|eps|)/3] = (1 + 2 e^(-s^2/2) (1 - s^2))/3`` for a rotation vector
    ``eps ~ N(0, s^2 I_3)``: E[cos|eps|] = e^(-s^2/2)(1 - s^2) (the k-derivative of the 3-d
    Gaussian characteristic function E[sin(k r)/r] = k e^(-k^2 s^2/2), at k = 1).

    ``rank`` l: E[chi_l]/(2l + 1), chi_l(theta) = 1 + 2 sum_{m<=l} cos(m theta), with
    E[cos(m theta)] = e^(-m^2 s^2/2)(1 - m^2 s^2).
    """
    s2 = np.square(sigma_rad)
    total = 1.0
    for m in range(1, rank + 1):
        total = total + 2 * np.exp(-m * m * s2 / 2) * (1 - m * m * s2)
    return total / (2 * rank + 1)


def gaussian_angle_cdf(theta, sigma_rad):
    """P(|eps| <= theta) for eps ~ N(0, sigma^2 I_3): the residual angle of readout model A is
    Maxwell-distributed, CDF erf(x/sqrt2) - sqrt(2/pi) x e^(-x^2/2) with x = theta/sigma (the
    Bloch angle is |eps| folded into [0, pi], the same while sigma << pi)."""
    x = np.asarray(theta, dtype=np.float64) / sigma_rad
    erf = np.vectorize(math.erf, otypes=[float])
    return erf(x / math.sqrt(2)) - math.sqrt(2 / math.pi) * x * np.exp(-x * x / 2)


def _gaussian_variance_for_shrink(shrink) -> Array:
    """Inverse of ``gaussian_shrink`` on s^2 in [0, 3] (where it decreases from 1 to 0.036),
    by bisection (vectorised; 60 halvings reach double precision)."""
    shrink = np.asarray(shrink, dtype=np.float64)
    lo, hi = np.zeros_like(shrink), np.full_like(shrink, 3.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        above = gaussian_shrink(np.sqrt(mid)) > shrink
        lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
    return (lo + hi) / 2


def _variance_for_shrink_scalar(shrink: float) -> float:
    """``_gaussian_variance_for_shrink`` for one float in plain arithmetic (the daemon calls
    it per payload crossing: ~10x faster than the numpy version on a scalar)."""
    lo, hi = 0.0, 3.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (1 + 2 * math.exp(-mid / 2) * (1 - mid)) / 3 > shrink:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def drift_step(u, dt_s: float, diffusion_rad2_per_s: float, rng: np.random.Generator,
               max_step: float = 0.1) -> Array:
    """Advance drift matrices ``u`` (..., 2, 2) by ``dt_s``: what the daemon calls per fibre
    when a payload crosses. Steps (cut so that D dt <= ``max_step``) left-multiply isotropic
    increments exp(-i eps.sigma/2), eps ~ N(0, s^2 I_3), with s^2 chosen so that
    ``gaussian_shrink`` equals exp(-D dt/3) exactly (s^2 = D dt/3 + O((D dt)^2), i.e.
    E theta^2 = D dt). Isotropic means multiply, so E[R] shrinks by ``drift_shrink(D, dt)``
    exactly, whatever the step sizes.
    """
    if not 0 < max_step <= 1:
        raise ValueError(f"max_step = {max_step} must be in (0, 1]")
    if diffusion_rad2_per_s < 0 or dt_s < 0:
        raise ValueError("the diffusion rate and the time step must be >= 0")
    u = np.asarray(u)
    x = diffusion_rad2_per_s * dt_s
    steps = math.ceil(x / max_step) if x > 0 else 0
    if steps:
        s = math.sqrt(_variance_for_shrink_scalar(math.exp(-x / steps / 3)))
        for _ in range(steps):
            u = su2(rng.normal(0.0, s, u.shape[:-2] + (3,))) @ u
    return u


def drift_walk(times_s, diffusion_rad2_per_s: float, rng: np.random.Generator,
               walks: int | None = None, max_step: float = 0.1) -> Array:
    """Sample a fibre's drift U(t) at the non-decreasing ``times_s`` (U(0) = I, the last
    calibration) by ``drift_step``: shape (len(times), 2, 2), or (walks, len(times), 2, 2)
    for independent fibres. E[R(t)] = ``drift_shrink(D, t)`` holds exactly at every time."""
    times = np.asarray(times_s, dtype=np.float64)
    if times.ndim != 1 or np.any(np.diff(times) < 0) or (times.size and times[0] < 0):
        raise ValueError("times must be a 1-d non-decreasing array of t >= 0")
    batch = () if walks is None else (walks,)
    u = np.broadcast_to(I2, batch + (2, 2)).copy()
    out = np.empty(batch + (times.size, 2, 2), dtype=complex)
    previous = 0.0
    for k, t in enumerate(times):
        u = drift_step(u, t - previous, diffusion_rad2_per_s, rng, max_step)
        out[..., k, :, :] = u
        previous = t
    return out


def haar_su2(rng: np.random.Generator, size: int) -> Array:
    """``size`` Haar-random SU(2) matrices (uniform unit quaternions): an uncalibrated fibre,
    or the walk's limit as D t -> inf."""
    q = rng.normal(size=(size, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q[:, 0, None, None] * I2 - 1j * np.einsum("nk,kij->nij", q[:, 1:], _SIGMA)


def bloch_rotation(u) -> Array:
    """SO(3) matrix of SU(2) ``u``: ``R_ij = Tr(sigma_i U sigma_j U^dagger)/2`` (U sigma_j U^dagger =
    sum_i R_ij sigma_i), so a Bloch vector r goes to R r."""
    u = np.asarray(u)
    ud = np.conj(np.swapaxes(u, -1, -2))
    m = np.einsum("iab,...bc,jcd,...da->...ij", _SIGMA, u, _SIGMA, ud)
    return m.real / 2


def su2_from_bloch(r) -> Array:
    """An SU(2) matrix (sign free) whose ``bloch_rotation`` is the SO(3) matrix ``r``: the unit
    quaternion (w, x, y, z) of r by Shepperd's method (largest component first, so it is stable
    near theta = pi); U = w I - i (x X + y Y + z Z)."""
    r = np.asarray(r, dtype=np.float64)
    d0, d1, d2 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    sq = np.stack([1 + d0 + d1 + d2, 1 + d0 - d1 - d2, 1 - d0 + d1 - d2, 1 - d0 - d1 + d2], -1)
    big = np.argmax(sq, axis=-1)
    e = np.sqrt(np.maximum(np.take_along_axis(sq, big[..., None], -1)[..., 0], 0.0)) / 2
    a = (r[..., 2, 1] - r[..., 1, 2]) / 4  # w x
    b = (r[..., 0, 2] - r[..., 2, 0]) / 4  # w y
    c = (r[..., 1, 0] - r[..., 0, 1]) / 4  # w z
    xy = (r[..., 0, 1] + r[..., 1, 0]) / 4
    xz = (r[..., 0, 2] + r[..., 2, 0]) / 4
    yz = (r[..., 1, 2] + r[..., 2, 1]) / 4
    with np.errstate(divide="ignore", invalid="ignore"):
        cand = np.stack([
            np.stack([e, a / e, b / e, c / e], -1),
            np.stack([a / e, e, xy / e, xz / e], -1),
            np.stack([b / e, xy / e, e, yz / e], -1),
            np.stack([c / e, xz / e, yz / e, e], -1),
        ], -2)
    q = np.take_along_axis(cand, big[..., None, None], -2)[..., 0, :]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return q[..., 0, None, None] * I2 - 1j * np.einsum("...k,kij->...ij", q[..., 1:], _SIGMA)


# ---------------------------------------------------------------------------------------------
# Header-based compensation: estimate U from the header's references, apply U_hat^dagger


def gaussian_estimate(u, sigma_rad: float, rng: np.random.Generator) -> Array:
    """Noisy readout model A: ``U_hat = exp(-i eps.sigma/2) U`` with ``eps ~ N(0, sigma^2 I_3)``
    (``sigma`` rad per axis; e.g. a polarimeter on the bright classical reference)."""
    u = np.asarray(u)
    return su2(rng.normal(0.0, sigma_rad, u.shape[:-2] + (3,))) @ u


def tomography_estimate(u, shots: int, rng: np.random.Generator) -> Array:
    """Noisy readout model B: each reference (H and D, ``REFERENCES``) arrives rotated to
    ``b = R a``; each Bloch component is read with ``shots`` two-outcome shots,
    ``b_hat_k = 2 k/N - 1``, ``k ~ Binomial(N, (1 + b_k)/2)``; R_hat is the rotation nearest in
    least squares (Kabsch: SVD of sum_i b_hat_i a_i^T, det fixed to +1)."""
    if shots < 1:
        raise ValueError("shots must be >= 1")
    r = bloch_rotation(u)
    b = r @ REFERENCES.T  # (..., 3 lab axes, 2 references)
    counts = rng.binomial(shots, np.clip((1 + b) / 2, 0.0, 1.0))
    h = (2 * counts / shots - 1) @ REFERENCES  # sum_i b_hat_i a_i^T
    us, _, vt = np.linalg.svd(h)
    flip = np.sign(np.linalg.det(us @ vt))
    us[..., :, 2] *= flip[..., None]
    return su2_from_bloch(us @ vt)


def tomography_residual_msq(shots: int, u=None):
    """E theta^2 of model B's residual to first order in 1/N: with R a = rotated reference a
    and v(a, b) = (1 - sum_k (R a)_k^2 (R b)_k^2)/N the readout noise of reference a along R b,
    the residual rotation vector is (-n_zy, (n_zx - n_xz)/2, n_xy), so
    ``E theta^2 = v(z, y) + v(x, y) + (v(z, x) + v(x, z))/4``: 2.5/N at U = I, 2/N averaged
    over Haar-random U (<(a.u)^2 (b.u)^2> = 1/15 per lab axis), the default (``u=None``)."""
    if u is None:
        return 2.0 / shots
    r = bloch_rotation(u)
    x2, y2, z2 = (np.square(r[..., :, j]) for j in range(3))
    total = 2.5 - np.sum(y2 * (z2 + x2), axis=-1) - np.sum(z2 * x2, axis=-1) / 2
    return total / shots


def tomography_sigma(shots: int, u=None):
    """Per-axis std of the isotropic Gaussian error with model B's E theta^2
    (``tomography_residual_msq``), for ``gaussian_shrink``; the approximation is first order
    in 1/N (valid for N >~ 50; docs/physics.md)."""
    return np.sqrt(tomography_residual_msq(shots, u) / 3)


def residual(u, u_hat) -> Array:
    """Rotation left on the payload after the router applies ``U_hat^dagger``:
    ``U_hat^dagger U`` (a waveplate, no measurement)."""
    return np.conj(np.swapaxes(np.asarray(u_hat), -1, -2)) @ np.asarray(u)


def compensated_shrink(sigma_rad, diffusion_rad2_per_s=0.0, lag_s=0.0, rank: int = 1):
    """Mean Bloch rotation left after compensation: ``gaussian_shrink(sigma) * exp(-D lag/3)``,
    the estimation error composed with the drift during the header-to-payload ``lag`` (an
    independent isotropic increment, so the means multiply; ``rank`` as in ``drift_shrink``)."""
    return gaussian_shrink(sigma_rad, rank) * drift_shrink(diffusion_rad2_per_s, lag_s, rank)
