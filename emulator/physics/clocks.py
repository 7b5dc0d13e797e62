"""Networks of clocks: Ramsey phase of a detuned qubit, parity of a Bell/GHZ state after an
interrogation, and the variances of frequency estimates with and without entanglement.

A node's clock runs ``detuning_hz`` = delta away from the reference; a qubit held in its memory
precesses in the node's frame as exp(-i 2 pi delta t Z / 2), i.e. |1> gains the phase
phi = 2 pi delta t over |0>. Kómár et al., Nature Physics 10, 582 (2014) (GHZ states spanning a
network of clocks); Nichol et al., Nature 609, 689 (2022) (Bell pair between two remote ion
clocks: sqrt(2) lower uncertainty of the frequency difference). Derivations: docs/physics.md,
"Networks of clocks".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from emulator.physics import states as st

Array = np.ndarray
TWO_PI = 2 * math.pi


def ramsey_phase(detuning_hz: float, t: float) -> float:
    """Phase phi = 2 pi delta t that a qubit at detuning ``delta`` gathers in ``t`` seconds."""
    return TWO_PI * detuning_hz * t


def precess(rho: Array, qubit: int, detuning_hz: float, t: float) -> Array:
    """``rho`` after ``qubit`` precessed ``t`` s at ``detuning_hz``: the Z rotation
    R_z(2 pi delta t). It commutes with T1/T2 decay, so the daemon may apply the two in any order."""
    return st.apply_gate(rho, st.rz(ramsey_phase(detuning_hz, t)), [qubit])


def combined_phase(signs: Sequence[int], phases: Sequence[float]) -> float:
    """Relative phase of |x̄> over |x> in (|x> + |x̄>)/sqrt 2, x_i = 0 where s_i = +1 and 1
    where s_i = -1, after qubit i gathered ``phases[i]``: Phi = sum_i s_i phi_i."""
    _check_signs(signs)
    if len(signs) != len(phases):
        raise ValueError("one phase per sign")
    return float(sum(s * p for s, p in zip(signs, phases)))


def parity(signs: Sequence[int], phases: Sequence[float], contrast: float = 1.0) -> float:
    """<Y X ... X> of that state (qubit 0 in Y, s_0 = +1): C sin(Phi), the mid-fringe Ramsey
    signal; ``contrast`` C = prod exp(-t_i/T2_i) with dephasing. One qubit (|+> start): C sin phi."""
    if signs[0] != 1:
        raise ValueError("the qubit measured in Y must have sign +1")
    return contrast * math.sin(combined_phase(signs, phases))


def phase_estimate(mean_parity: float, contrast: float = 1.0) -> float:
    """Phi estimated from the mean of M parities (+1/-1): arcsin(mean / C), clipped to [-1, 1];
    unambiguous for |Phi| < pi/2 (choose the interrogation time so)."""
    return math.asin(min(1.0, max(-1.0, mean_parity / contrast)))


def phase_variance(shots: int, phi: float = 0.0, contrast: float = 1.0) -> float:
    """Variance of that estimate to first order: (1 - C^2 sin^2 Phi) / (M C^2 cos^2 Phi), i.e.
    1/M for C = 1 at any Phi (each +-1 outcome carries Fisher information 1 about Phi)."""
    if shots < 1:
        raise ValueError("shots must be >= 1")
    s, c = math.sin(phi), math.cos(phi)
    return (1 - (contrast * s) ** 2) / (shots * (contrast * c) ** 2)


def entangled_variance(shots: int, t: float, n_nodes: int = 2) -> float:
    """Variance of the estimate of D = sum_i s_i delta_i (Hz^2) from ``shots`` N-qubit Bell/GHZ
    states each interrogated ``t`` s: Phi = 2 pi t D, so var = 1/(M (2 pi t)^2), whatever N."""
    _check(n_nodes, t)
    return phase_variance(shots) / (TWO_PI * t) ** 2


def unentangled_variance(shots: int, t: float, n_nodes: int = 2) -> float:
    """The same D from ``shots`` rounds of one independent Ramsey qubit per node: each
    delta_i has var 1/(M (2 pi t)^2) and D sums N of them: var = N/(M (2 pi t)^2)."""
    _check(n_nodes, t)
    return n_nodes * phase_variance(shots) / (TWO_PI * t) ** 2


def mean_variances(shots: int, t: float, n_nodes: int) -> tuple[float, float]:
    """(entangled, unentangled) variances of D/N (the mean signed offset): 1/(M N^2 (2 pi t)^2)
    against 1/(M N (2 pi t)^2): the GHZ standard deviation falls as 1/N, the
    unentangled one as 1/sqrt N (Heisenberg against standard quantum limit; Kómár et al.)."""
    n2 = n_nodes * n_nodes
    return (entangled_variance(shots, t, n_nodes) / n2,
            unentangled_variance(shots, t, n_nodes) / n2)


def pairs_per_state(n_nodes: int) -> int:
    """Bell pairs consumed to fuse one N-node GHZ state (a chain of N - 1 pairs)."""
    _check(n_nodes, 1.0)
    return n_nodes - 1


def default_signs(n_nodes: int) -> list[int]:
    """Alternating +1, -1, +1, ...: for two nodes D = delta_a - delta_b (the clock difference)."""
    return [1 if i % 2 == 0 else -1 for i in range(n_nodes)]


def _check(n_nodes: int, t: float) -> None:
    if n_nodes < 1:
        raise ValueError("n_nodes must be >= 1")
    if not t > 0:
        raise ValueError("the interrogation time must be > 0")


def _check_signs(signs: Sequence[int]) -> None:
    if not signs or any(s not in (1, -1) for s in signs):
        raise ValueError("signs must be a non-empty list of +1 and -1")
