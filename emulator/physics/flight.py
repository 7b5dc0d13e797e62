"""Photonic qubits in flight over a path of fibres and routers' delay lines: what arrives, when,
and with which fidelity — with and without header-based compensation.

Each hop is a fibre (loss ``channels.transmittance``, group delay ``channels.fibre_delay``,
polarisation drift ``polarisation``, Raman noise ``raman``) ending at a router's delay line (a
fixed spool of ``switch_budget_us``: the switch must be set before the payload leaves it, else
the payload is lost as *late*) or at the destination. Pure numpy; derivation and conventions in
docs/physics.md, "Qubits in flight". The orchestrator's predictions come from ``path_model``.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from emulator.physics import polarisation as pol
from emulator.physics import states as st
from emulator.physics.channels import fibre_delay, transmittance

Array = np.ndarray


class Hop(msgspec.Struct, frozen=True):
    """One fibre of a path and what sits at its far end.

    ``noise_photons``: Raman photons per gate in the payload's mode at the fibre's output
    (``raman.noise_photons`` with efficiency 1). ``compensated``: the far end applies U_hat^dagger
    from the header's references, read with per-axis error ``estimation_sigma_rad``
    (``polarisation.tomography_sigma`` for N-shot tomography) ``header_lag_s`` before the
    payload. ``switch_budget_us`` = 0 means no delay line (the destination).
    """

    length_km: float
    attenuation_db_per_km: float = 0.2
    drift_rad2_per_s: float = 0.0
    noise_photons: float = 0.0
    compensated: bool = False
    estimation_sigma_rad: float = 0.0
    header_lag_s: float = 0.0
    switch_budget_us: float = 0.0
    delay_line_db_per_us: float = 0.0


class PathPrediction(msgspec.Struct, frozen=True):
    """Fractions of the payloads sent (sum to 1) and the fidelity of those delivered."""

    delivered: float
    lost_in_fibre: float  # in a fibre or a delay line
    late: float  # survived to a router whose decision came after the budget
    shrink: float  # mean Bloch rotation lambda of the delivered payloads
    depolarising: float  # Raman part: p = 1 - exp(-eta_det n/2), n at the destination
    fidelity: float  # input-averaged (1 + lambda)/2 (a known random state)
    pair_fidelity: float  # (1 + 3 lambda)/4 (one half of a Bell pair sent)
    delay_s: float  # send to arrival: fibre group delays plus delay lines


def delay_line(budget_us: float, db_per_us: float, decision_us=0.0):
    """``(survival, late)`` of a payload in a fixed spool of ``budget_us``: survival
    ``10^(-db_per_us budget/10)`` (the payload always crosses the whole spool) and ``late`` =
    the router's decision time exceeds the budget (vectorised over decision times)."""
    survival = 10.0 ** (-db_per_us * budget_us / 10.0)
    return survival, np.asarray(decision_us) > budget_us


def late_fraction(decision_samples_us, budget_us: float) -> float:
    """Predicted late share at a router: the fraction of its measured decision latencies above
    the budget (the empirical distribution of Python's real latency)."""
    samples = np.asarray(decision_samples_us, dtype=np.float64)
    return float(np.mean(samples > budget_us)) if samples.size else 0.0


def hop_shrink(hop: Hop, t_since_calibration_s: float = 0.0) -> float:
    """Mean Bloch rotation ``lambda`` the hop's polarisation leaves on a payload:
    compensated, ``polarisation.compensated_shrink(sigma, D, lag)``; uncompensated, the drift
    since the fibre's last calibration, ``polarisation.drift_shrink(D, t)``."""
    if hop.compensated:
        return float(pol.compensated_shrink(hop.estimation_sigma_rad, hop.drift_rad2_per_s,
                                            hop.header_lag_s))
    return float(pol.drift_shrink(hop.drift_rad2_per_s, t_since_calibration_s))


def _downstream(hops: Sequence[Hop]) -> list[float]:
    """A_i: the share of light at hop i's fibre output that reaches the destination (its own
    delay line, then every later fibre and delay line)."""
    share, out = 1.0, []
    for hop in reversed(hops):
        share *= delay_line(hop.switch_budget_us, hop.delay_line_db_per_us)[0]
        out.append(share)
        share *= float(transmittance(hop.length_km, hop.attenuation_db_per_km))
    return out[::-1]


def noise_at_destination(hops: Sequence[Hop]) -> float:
    """Raman photons per gate reaching the destination in the payload's slot: each hop's
    noise is switched along with the payload, so ``n = sum_i n_i A_i`` with A_i the delay-line
    and fibre transmittance downstream of hop i's output."""
    return sum(hop.noise_photons * a for hop, a in zip(hops, _downstream(hops)))


def hop_depolarising(hops: Sequence[Hop], eta_det: float = 1.0) -> list[float]:
    """Per-hop depolarising probabilities p_i = 1 - exp(-eta_det n_i A_i/2); composed they
    give the destination's Raman depolarisation: what the daemon applies hop by hop with
    ``transit`` so that it agrees with ``path_model``."""
    return [-float(np.expm1(-eta_det * hop.noise_photons * a / 2))
            for hop, a in zip(hops, _downstream(hops))]


def path_model(hops: Sequence[Hop], t_since_calibration_s: float = 0.0,
               eta_det: float = 1.0, late: Sequence[float] | None = None) -> PathPrediction:
    """Expected fate of a payload sent over ``hops`` at ``t_since_calibration_s``: survival
    prod_i T_i s_i (fibre, spool), late shares ``late[i]`` at each hop's far end (e.g. from
    ``late_fraction``), and lambda = prod_i lambda_i * (1 - p_Raman) — isotropic channels, so
    their mean rotations multiply (``polarisation.fidelity_from_shrink``)."""
    late = [0.0] * len(hops) if late is None else list(late)
    if len(late) != len(hops):
        raise ValueError("one late share per hop")
    alive, lost, late_total, shrink, delay = 1.0, 0.0, 0.0, 1.0, 0.0
    for hop, late_share in zip(hops, late):
        t = float(transmittance(hop.length_km, hop.attenuation_db_per_km))
        spool, _ = delay_line(hop.switch_budget_us, hop.delay_line_db_per_us)
        lost += alive * (1 - t * spool)
        alive *= t * spool
        late_total += alive * late_share
        alive *= 1 - late_share
        shrink *= hop_shrink(hop, t_since_calibration_s)
        delay += float(fibre_delay(hop.length_km)) + hop.switch_budget_us * 1e-6
    p = -float(np.expm1(-eta_det * noise_at_destination(hops) / 2))
    shrink *= 1 - p
    f_avg, f_pair = pol.fidelity_from_shrink(shrink)
    return PathPrediction(alive, lost, late_total, shrink, p, float(f_avg), float(f_pair), delay)


def fidelity_spread(hops: Sequence[Hop], times_s, eta_det: float = 1.0) -> tuple[float, float]:
    """Standard deviation across runs of the mean expected fidelity (F_avg, F_pair) of payloads
    sent at ``times_s`` (since calibration): uncompensated hops share one walk per run, so the
    packets are correlated and a per-packet standard error alone is too small.

    Given the rotation M_k and Raman p, F_avg = 1/2 + (1-p) Tr M_k/6 and
    F_pair = 1/4 + (1-p) Tr M_k/4. With D the summed drift of uncompensated hops,
    L_l(t) = ``drift_shrink(D, t, l)`` and c_l the compensated hops' ``compensated_shrink``
    (rank l, independent per packet), for t_j < t_k:
    Cov(Tr M_j, Tr M_k) = c_1^2 [L_1(t_k - t_j)(1 + 3 L_1(t_j) + 5 L_2(t_j)) - 9 L_1(t_j) L_1(t_k)]
    and Var(Tr M_k) = 1 + 3 c_1 L_1 + 5 c_2 L_2 - 9 c_1^2 L_1^2 (chi_1^2 = chi_0 + chi_1 + chi_2;
    docs/physics.md). Assumes header lags shorter than the packet spacing.
    """
    t = np.sort(np.asarray(times_s, dtype=np.float64))
    d = sum(h.drift_rad2_per_s for h in hops if not h.compensated)
    c1 = c2 = 1.0
    for h in hops:
        if h.compensated:
            args = (h.estimation_sigma_rad, h.drift_rad2_per_s, h.header_lag_s)
            c1 *= float(pol.compensated_shrink(*args, rank=1))
            c2 *= float(pol.compensated_shrink(*args, rank=2))
    l1, l2 = pol.drift_shrink(d, t), pol.drift_shrink(d, t, rank=2)
    second = 1 + 3 * l1 + 5 * l2  # E[(Tr A_j)^2] of the uncompensated product A
    total = 0.0
    for start in range(0, t.size, 512):  # rows j of the j < k triangle, in bounded chunks
        j = np.arange(start, min(start + 512, t.size))
        gap = t[None, :] - t[j, None]
        cov = c1**2 * (pol.drift_shrink(d, np.abs(gap)) * second[j, None]
                       - 9 * l1[j, None] * l1[None, :])
        total += 2 * float(np.sum(np.where(np.arange(t.size)[None, :] > j[:, None], cov, 0.0)))
    total += float(np.sum(1 + 3 * c1 * l1 + 5 * c2 * l2 - 9 * c1**2 * l1**2))
    sd_trace = np.sqrt(max(total, 0.0)) / t.size
    keep = float(np.exp(-eta_det * noise_at_destination(hops) / 2))  # 1 - p
    return float(keep * sd_trace / 6), float(keep * sd_trace / 4)


class FlowPrediction(msgspec.Struct, frozen=True):
    """A flow's model for result.json: fractions as in ``PathPrediction``, fidelities averaged
    over the packets' send times, and the run-to-run spread of their mean (``fidelity_spread``)."""

    delivered: float
    lost_in_fibre: float
    late: float
    fidelity: float
    pair_fidelity: float
    fidelity_spread: float
    pair_fidelity_spread: float


def flow_model(hops: Sequence[Hop], times_s, eta_det: float = 1.0,
               late: Sequence[float] | None = None) -> FlowPrediction:
    """``path_model`` averaged over the send times ``times_s`` (since calibration) with
    ``fidelity_spread``: what the orchestrator compares a flow's measured mean fidelity with,
    using sqrt(spread^2 + the estimator's standard error^2)."""
    times = np.asarray(times_s, dtype=np.float64)
    if times.size == 0:
        raise ValueError("a flow needs at least one send time")
    models = [path_model(hops, float(t), eta_det, late) for t in times]
    spread = fidelity_spread(hops, times, eta_det)
    first = models[0]
    return FlowPrediction(first.delivered, first.lost_in_fibre, first.late,
                          float(np.mean([m.fidelity for m in models])),
                          float(np.mean([m.pair_fidelity for m in models])), *spread)


def transit(rho: Array, qubit: int, u, p_depolarise: float = 0.0, u_hat=None) -> Array:
    """Apply one hop to ``qubit`` of a density matrix: the fibre's rotation ``u`` at the
    payload's crossing, then the far end's waveplate ``u_hat^dagger`` if it compensates (no
    measurement), then depolarising with ``p_depolarise`` (``states.depolarize``)."""
    gate = np.asarray(u) if u_hat is None else pol.residual(u, u_hat)
    rho = st.apply_gate(rho, gate, [qubit])
    return st.depolarize(rho, qubit, p_depolarise) if p_depolarise > 0 else rho
