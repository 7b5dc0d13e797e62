"""Quantum states held by the daemon: density matrices of small registers and Bell-diagonal pairs.

Pure numpy functions (no I/O; randomness only through an explicit ``numpy.random.Generator``) so
every formula can be tested on its own; ``emulator/daemon/memories.py`` builds the daemon's
registry on them, ``bell_diagonal`` holds the coefficient fast path and the Pauli-frame tables,
``memories`` (this package) the T1/T2 channels.

Conventions (also in docs/entanglement.md):

* **Qubit order.** Qubit 0 is the leftmost tensor factor / most significant bit: in a register of
  ``n`` qubits the basis state ``|b0 b1 ... b(n-1)>`` has index ``sum_k b_k 2**(n-1-k)`` (as in
  qutip's ``tensor``; the reverse of Qiskit's little-endian order).
* **Bell states and Bell-diagonal order** (Deutsch et al., PRL 77, 2818 (1996)):
  index 0 ``Phi+ = (|00>+|11>)/sqrt2``, 1 ``Psi- = (|01>-|10>)/sqrt2``,
  2 ``Psi+ = (|01>+|10>)/sqrt2``, 3 ``Phi- = (|00>-|11>)/sqrt2``. Index ``k`` is ``Phi+`` with the
  Pauli ``bell_diagonal.BELL_PAULI[k]`` (``I, Y, X, Z``) applied to either qubit (up to a
  phase). A Bell-diagonal pair is the 4-vector ``c = (A, B, C, D)`` of weights on those
  states; its fidelity is ``A``.
* **Bell-state measurement outcome** ``(m1, m2)``: CNOT(q1 -> q2), H(q1), measure both in Z.
  ``m1`` is the phase bit and ``m2`` the parity bit of the projected Bell state:
  ``(0,0) Phi+, (1,0) Phi-, (0,1) Psi+, (1,1) Psi-``. The remote correction that undoes the
  outcome (teleportation and swapping alike) is ``X**m2 Z**m1`` (``pauli_correction``).
* **Channels** are Kraus maps with their parameter convention in each docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from emulator.physics.bell_diagonal import bell_outcome, werner_coefficients

Array = np.ndarray

# ---------------------------------------------------------------------------------------------
# Kets, density matrices, registers

_SINGLE_KETS = {
    "0": np.array([1, 0], dtype=complex),
    "1": np.array([0, 1], dtype=complex),
    "+": np.array([1, 1], dtype=complex) / math.sqrt(2),
    "-": np.array([1, -1], dtype=complex) / math.sqrt(2),
    "r": np.array([1, 1j], dtype=complex) / math.sqrt(2),  # +1 eigenstate of Y
    "l": np.array([1, -1j], dtype=complex) / math.sqrt(2),  # -1 eigenstate of Y
}


def ket(labels: str | Sequence[int]) -> Array:
    """Product ket from one label per qubit: ``0 1`` (Z), ``+ -`` (X), ``r l`` (Y = +1/-1).

    ``ket("01")`` is ``|0>|1>`` with qubit 0 leftmost (see module docstring for the order).
    """
    out = np.array([1], dtype=complex)
    for label in labels:
        out = np.kron(out, _SINGLE_KETS[str(label)])
    return out


def density(psi: Array) -> Array:
    """Projector ``|psi><psi|`` of a ket."""
    psi = np.asarray(psi, dtype=complex).reshape(-1)
    return np.outer(psi, psi.conj())


def tensor(*parts: Array) -> Array:
    """Kronecker product in qubit order (first argument holds the lowest-numbered qubits)."""
    out = np.array([[1]], dtype=complex)
    for part in parts:
        out = np.kron(out, part)
    return out


def n_qubits(rho: Array) -> int:
    """Number of qubits of a ``2**n x 2**n`` density matrix."""
    n = int(rho.shape[0]).bit_length() - 1
    if rho.shape != (1 << n, 1 << n):
        raise ValueError(f"not a qubit register: shape {rho.shape}")
    return n


def ptrace(rho: Array, keep: Sequence[int]) -> Array:
    """Partial trace keeping qubits ``keep`` (returned in ascending qubit order)."""
    n = n_qubits(rho)
    keep_set = set(keep)
    t = rho.reshape((2,) * (2 * n))
    cur = n
    for q in sorted(set(range(n)) - keep_set, reverse=True):
        t = np.trace(t, axis1=q, axis2=q + cur)
        cur -= 1
    dim = 1 << cur
    return t.reshape(dim, dim)


def permute(rho: Array, order: Sequence[int]) -> Array:
    """Reorder qubits: qubit ``i`` of the result is qubit ``order[i]`` of ``rho``."""
    n = n_qubits(rho)
    order = list(order)
    t = rho.reshape((2,) * (2 * n)).transpose(order + [n + q for q in order])
    return t.reshape(1 << n, 1 << n)


def apply_gate(rho: Array, gate: Array, targets: Sequence[int]) -> Array:
    """``G rho G^dagger`` with the ``2**k x 2**k`` matrix ``gate`` acting on qubits ``targets``.

    ``targets[0]`` is the gate's most significant qubit (the control of ``CNOT``). ``gate`` need
    not be unitary, so the same function applies Kraus operators and projectors.
    """
    n = n_qubits(rho)
    targets = list(targets)
    k = len(targets)
    if len(set(targets)) != k or any(not 0 <= q < n for q in targets):
        raise ValueError(f"bad targets {targets} for {n} qubits")
    g = np.asarray(gate, dtype=complex).reshape((2,) * (2 * k))
    t = rho.reshape((2,) * (2 * n))
    t = np.tensordot(g, t, axes=(list(range(k, 2 * k)), targets))
    t = np.moveaxis(t, list(range(k)), targets)
    cols = [n + q for q in targets]
    t = np.tensordot(t, g.conj(), axes=(cols, list(range(k, 2 * k))))
    t = np.moveaxis(t, list(range(2 * n - k, 2 * n)), cols)
    return t.reshape(1 << n, 1 << n)


def apply_kraus(rho: Array, kraus: Sequence[Array], targets: Sequence[int]) -> Array:
    """Channel ``sum_i K_i rho K_i^dagger`` on ``targets``."""
    out = np.zeros_like(rho, dtype=complex)
    for k in kraus:
        out += apply_gate(rho, k, targets)
    return out


def expectation(rho: Array, op: Array, targets: Sequence[int]) -> float:
    """``Tr(rho O)`` for a Hermitian ``op`` on ``targets`` (real part)."""
    reduced = ptrace(rho, targets)
    order = sorted(targets)
    # ptrace returns ascending order; bring op's qubits into that order
    perm = [list(targets).index(q) for q in order]
    k = len(targets)
    op_sorted = np.asarray(op, dtype=complex).reshape((2,) * (2 * k))
    op_sorted = op_sorted.transpose(perm + [k + p for p in perm]).reshape(1 << k, 1 << k)
    return float(np.real(np.trace(reduced @ op_sorted)))


# ---------------------------------------------------------------------------------------------
# Gates

I2 = np.eye(2, dtype=complex)
X = np.array([[0, 1], [1, 0]], dtype=complex)
Y = np.array([[0, -1j], [1j, 0]], dtype=complex)
Z = np.array([[1, 0], [0, -1]], dtype=complex)
H = np.array([[1, 1], [1, -1]], dtype=complex) / math.sqrt(2)
S = np.array([[1, 0], [0, 1j]], dtype=complex)
CNOT = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], dtype=complex)
CZ = np.diag([1, 1, 1, -1]).astype(complex)
PAULIS = {"I": I2, "X": X, "Y": Y, "Z": Z}


def rot(axis: Sequence[float], theta: float) -> Array:
    """Rotation ``exp(-i theta/2 n.sigma)`` by ``theta`` radians about the unit axis ``n``."""
    n = np.asarray(axis, dtype=float)
    n = n / np.linalg.norm(n)
    gen = n[0] * X + n[1] * Y + n[2] * Z
    return math.cos(theta / 2) * I2 - 1j * math.sin(theta / 2) * gen


def rx(theta: float) -> Array:
    """``exp(-i theta X / 2)``."""
    return rot((1, 0, 0), theta)


def ry(theta: float) -> Array:
    """``exp(-i theta Y / 2)``; ``ry(t) Z ry(t)^dagger = cos t Z + sin t X``."""
    return rot((0, 1, 0), theta)


def rz(theta: float) -> Array:
    """``exp(-i theta Z / 2)``."""
    return rot((0, 0, 1), theta)


# ---------------------------------------------------------------------------------------------
# Measurement

_BASIS_KETS = {"Z": ("0", "1"), "X": ("+", "-"), "Y": ("r", "l")}


def outcome_probabilities(rho: Array, qubit: int, basis: str) -> tuple[float, float]:
    """Born probabilities ``(p0, p1)`` of measuring ``qubit`` in ``basis`` ("Z", "X" or "Y").

    Outcome 0 is the +1 eigenstate (``|0>``, ``|+>``, ``|+i>``), 1 the -1 eigenstate.
    """
    reduced = ptrace(rho, [qubit])
    v0 = _SINGLE_KETS[_BASIS_KETS[basis][0]]
    p0 = float(np.real(v0.conj() @ reduced @ v0))
    p0 = min(1.0, max(0.0, p0))
    return p0, 1.0 - p0


def measure(rho: Array, qubit: int, basis: str, rng: np.random.Generator) -> tuple[int, Array]:
    """Projective measurement of ``qubit`` in ``basis`` ("Z", "X", "Y") with Born probabilities.

    Returns ``(outcome, post)``; ``post`` keeps all qubits, the measured one collapsed to the
    eigenstate of the outcome (``P rho P / p``). Outcome 0 = eigenvalue +1.
    """
    p0, _ = outcome_probabilities(rho, qubit, basis)
    outcome = 0 if rng.random() < p0 else 1
    v = _SINGLE_KETS[_BASIS_KETS[basis][outcome]]
    post = apply_gate(rho, np.outer(v, v.conj()), [qubit])
    return outcome, post / np.real(np.trace(post))


# ---------------------------------------------------------------------------------------------
# Bell states and Bell-state measurement

def bell_state(index: int) -> Array:
    """Ket of Bell state ``index`` in the order ``Phi+, Psi-, Psi+, Phi-`` (module docstring)."""
    s = 1 / math.sqrt(2)
    return {
        0: np.array([s, 0, 0, s], dtype=complex),
        1: np.array([0, s, -s, 0], dtype=complex),
        2: np.array([0, s, s, 0], dtype=complex),
        3: np.array([s, 0, 0, -s], dtype=complex),
    }[index]


_BELL_PROJECTORS = [density(bell_state(k)) for k in range(4)]
_BELL_MATRIX = np.array([bell_state(k) for k in range(4)])  # rows = <B_k| conjugated


def pauli_correction(m1: int, m2: int) -> Array:
    """Correction ``X**m2 Z**m1`` that the far end applies after BSM outcome ``(m1, m2)``."""
    return np.linalg.matrix_power(X, m2) @ np.linalg.matrix_power(Z, m1)


def werner(fidelity_: float) -> Array:
    """Werner state ``F |Phi+><Phi+| + (1-F)/3 (I - |Phi+><Phi+|)`` (Werner, PRA 40, 4277)."""
    return to_density(werner_coefficients(fidelity_))


def fidelity(rho: Array, target: Array) -> float:
    """Fidelity ``<psi|rho|psi>`` with a pure target ket.

    This is the *squared* Uhlmann–Jozsa fidelity ``(Tr sqrt(sqrt(rho) sigma sqrt(rho)))**2``
    (Jozsa, J. Mod. Opt. 41, 2315); qutip's ``metrics.fidelity`` returns the unsquared root, so
    ``fidelity(rho, psi) == qutip.fidelity(rho, psi)**2``. Pair fidelities in the entanglement
    literature (Werner F, BBPSSW, DEJMPS) use this squared convention.
    """
    psi = np.asarray(target, dtype=complex).reshape(-1)
    return float(np.real(psi.conj() @ rho @ psi))


def bell_measure_branches(rho: Array, q1: int, q2: int) -> list[tuple[int, int, float, Array]]:
    """All four BSM branches on ``(q1, q2)``: ``(m1, m2, probability, post)``.

    ``post`` is the normalised state of the remaining qubits (ascending order), uncorrected;
    it is ``[[1]]`` when nothing remains; a zero-probability branch carries the zero matrix.
    Used for exact outcome-averaged results and by ``bell_measure``.
    """
    n = n_qubits(rho)
    rest = [q for q in range(n) if q not in (q1, q2)]
    out = []
    for k in range(4):
        projected = ptrace(apply_gate(rho, _BELL_PROJECTORS[k], [q1, q2]), rest)
        p = float(np.real(np.trace(projected)))
        post = projected / p if p > 1e-15 else projected
        m1, m2 = bell_outcome(k)
        out.append((m1, m2, max(p, 0.0), post))
    return out


def bell_measure(
    rho: Array, q1: int, q2: int, rng: np.random.Generator
) -> tuple[int, int, Array]:
    """Bell-state measurement of qubits ``q1, q2``: ``(m1, m2, post on remaining qubits)``.

    Equivalent to CNOT(q1 -> q2), H(q1), Z-measurements (module docstring for the outcome bits);
    both measured qubits are removed; the remaining state is not corrected.
    """
    branches = bell_measure_branches(rho, q1, q2)
    probs = np.array([b[2] for b in branches])
    k = int(rng.choice(4, p=probs / probs.sum()))
    m1, m2, _, post = branches[k]
    return m1, m2, post


# ---------------------------------------------------------------------------------------------
# Channels (Kraus maps on one qubit of a register)


def depolarize(rho: Array, qubit: int, p: float) -> Array:
    """Depolarising channel: ``rho -> (1-p) rho + p (I/2 (x) Tr_q rho)``.

    Equivalently ``(1 - 3p/4) rho + p/4 (X rho X + Y rho Y + Z rho Z)``; ``p = 1`` fully mixes
    the qubit (Nielsen & Chuang eq. 8.102 with this ``p``).
    """
    kraus = [math.sqrt(1 - 3 * p / 4) * I2] + [math.sqrt(p / 4) * P for P in (X, Y, Z)]
    return apply_kraus(rho, kraus, [qubit])


def dephase(rho: Array, qubit: int, p: float) -> Array:
    """Dephasing (phase flip): ``rho -> (1-p) rho + p Z rho Z``; coherences scale by ``1 - 2p``
    (Nielsen & Chuang §8.3.6)."""
    return apply_kraus(rho, [math.sqrt(1 - p) * I2, math.sqrt(p) * Z], [qubit])


def amplitude_damp(rho: Array, qubit: int, gamma: float) -> Array:
    """Amplitude damping ``|1> -> |0>`` with probability ``gamma``: Kraus
    ``K0 = [[1,0],[0,sqrt(1-gamma)]], K1 = [[0,sqrt(gamma)],[0,0]]`` (Nielsen & Chuang §8.3.5)."""
    k0 = np.array([[1, 0], [0, math.sqrt(1 - gamma)]], dtype=complex)
    k1 = np.array([[0, math.sqrt(gamma)], [0, 0]], dtype=complex)
    return apply_kraus(rho, [k0, k1], [qubit])


# ---------------------------------------------------------------------------------------------
# Bell-diagonal pairs (coefficients and their formulas: ``bell_diagonal``) as density matrices


def to_density(c: Array) -> Array:
    """Density matrix ``sum_k c_k |B_k><B_k|`` of a Bell-diagonal pair (qubits 0, 1)."""
    return np.einsum("k,kij->ij", np.asarray(c, dtype=float), np.array(_BELL_PROJECTORS))


def from_density(rho: Array) -> Array:
    """Bell-diagonal coefficients ``c_k = <B_k|rho|B_k>`` of a two-qubit state.

    Exact for Bell-diagonal states; for any other state it is the result of the bilateral Pauli
    twirl (Bennett et al., PRA 54, 3824 (1996)), which keeps every ``c_k`` and kills the rest.
    """
    return np.real(np.einsum("ki,ij,kj->k", _BELL_MATRIX.conj(), rho, _BELL_MATRIX))
