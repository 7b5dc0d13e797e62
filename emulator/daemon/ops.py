"""State operations a node asks for on its own qubits: prepare, gates, measurements, discard.

Transport-free: ``StateOps.apply(node, request, now)`` returns the reply (an ``Error`` for a
refused request, never an exception). A node may only act on its own slots; every operation
that frees slots calls ``on_freed`` so heralded links waiting for room wake up.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec
import numpy as np

from emulator.daemon import memories as mem
from emulator.daemon import protocol as p
from emulator.physics import states as st

ONE_QUBIT_GATES = {"I": st.I2, "X": st.X, "Y": st.Y, "Z": st.Z, "H": st.H, "S": st.S,
                   "SDG": st.S.conj().T}
ROTATIONS = {"RX": st.rx, "RY": st.ry, "RZ": st.rz}
TWO_QUBIT_GATES = {"CNOT": st.CNOT, "CZ": st.CZ}
PAULIS = ("I", "X", "Y", "Z")  # applied on the Bell-diagonal fast path
REQUESTS = (p.QubitPrepare, p.QubitGate, p.QubitMeasure, p.BellMeasure, p.QubitDiscard)


def gate_matrix(name: str, angle: float, n_qubits: int,
                axis: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Matrix of a named gate; ``ValueError`` for an unknown name, the wrong qubit count or a
    non-finite angle or axis."""
    name = name.upper()
    if not math.isfinite(angle):
        raise ValueError("the angle must be finite")
    if name == "ROT":
        if n_qubits != 1 or not np.all(np.isfinite(axis)) or not np.any(axis):
            raise ValueError("ROT needs one qubit and a finite non-zero axis")
        return st.rot(axis, angle)
    if name in ONE_QUBIT_GATES or name in ROTATIONS:
        if n_qubits != 1:
            raise ValueError(f"gate {name} acts on one qubit, not {n_qubits}")
        return ONE_QUBIT_GATES[name] if name in ONE_QUBIT_GATES else ROTATIONS[name](angle)
    if name in TWO_QUBIT_GATES:
        if n_qubits != 2:
            raise ValueError(f"gate {name} acts on two qubits, not {n_qubits}")
        return TWO_QUBIT_GATES[name]
    raise ValueError(f"unknown gate {name!r}")


def pure_density(theta: float, phi: float) -> np.ndarray:
    """|psi><psi| of ``cos(theta/2)|0> + exp(i phi) sin(theta/2)|1>`` (``QubitPrepare``),
    written out: a 2x2 outer product in scalars is several times cheaper than numpy's."""
    c, s = math.cos(theta / 2), math.sin(theta / 2)
    off = c * s * complex(math.cos(phi), -math.sin(phi))  # <0|rho|1> = c s e^(-i phi)
    return np.array([[c * c, off], [off.conjugate(), s * s]], dtype=complex)


class StateOps:
    """Applies one node's state-level requests to the daemon's ``QuantumMemories``."""

    def __init__(self, memories: mem.QuantumMemories, rng: np.random.Generator,
                 on_freed: Callable[[], None]) -> None:
        self.memories = memories
        self.rng = rng
        self.on_freed = on_freed
        self._table: dict[type, Callable[[str, msgspec.Struct, float], msgspec.Struct]] = {
            p.QubitPrepare: self._prepare,
            p.QubitGate: self._gate,
            p.QubitMeasure: self._measure,
            p.BellMeasure: self._bell,
            p.QubitDiscard: self._discard,
        }

    def apply(self, node: str, request, now: float) -> msgspec.Struct:
        """Reply to one request of ``node`` acting at emulated time ``now``."""
        try:
            return self._table[type(request)](node, request, now)
        except mem.NotOwner as exc:
            return p.Error("not_allowed", str(exc), id=request.id)
        except mem.NoFreeSlot as exc:
            return p.Error("no_free_slot", str(exc), id=request.id)
        except mem.CutoffExpired as exc:
            self.on_freed()
            return p.Error("expired", str(exc), id=request.id)
        except mem.EmptySlot as exc:
            return p.Error("empty_slot", str(exc), id=request.id)
        except mem.RegisterTooLarge as exc:
            return p.Error("too_large_register", str(exc), id=request.id)
        except ValueError as exc:
            return p.Error("bad_request", str(exc), id=request.id)

    def _prepare(self, node: str, request: p.QubitPrepare, now: float) -> p.Prepared:
        (ref,) = self.memories.store_density([node], pure_density(request.theta, request.phi),
                                             now)
        return p.Prepared(request.id, p.QubitRef(ref.node, ref.slot), now)

    def _gate(self, node: str, request: p.QubitGate, now: float) -> p.Done:
        refs = _own(node, request.qubits)
        if len(set(refs)) != len(refs):
            raise ValueError("a gate needs distinct qubits")
        matrix = gate_matrix(request.gate, request.angle, len(refs), request.axis)
        if len(refs) == 1 and request.gate.upper() in PAULIS:
            self.memories.apply_pauli(node, refs[0], request.gate.upper(), now)
        else:
            self.memories.apply_gate(node, refs, matrix, now)
        return p.Done(request.id, now)

    def _measure(self, node: str, request: p.QubitMeasure, now: float) -> p.Measured:
        refs = _own(node, request.qubits)
        bases = request.bases * len(refs) if len(request.bases) == 1 else request.bases
        if len(bases) != len(refs) or any(b not in ("X", "Y", "Z") for b in bases):
            raise ValueError("give one basis (X, Y or Z) per qubit, or one for all")
        if len(set(refs)) != len(refs):
            raise ValueError("a qubit appears twice")
        out = bytearray()
        try:
            for ref, basis in zip(refs, bases):
                out.append(self.memories.measure(node, ref, basis, now, self.rng))
        finally:
            if out:
                self.on_freed()
        return p.Measured(request.id, bytes(out), now)

    def _bell(self, node: str, request: p.BellMeasure, now: float) -> p.BellResult:
        if request.q1 == request.q2:
            raise ValueError("Bell measurement needs two different qubits")
        ref1, ref2 = _own(node, [request.q1, request.q2])
        m1, m2 = self.memories.bell_measure(node, ref1, ref2, now, self.rng)
        self.on_freed()
        return p.BellResult(request.id, m1, m2, now)

    def _discard(self, node: str, request: p.QubitDiscard, now: float) -> p.Done:
        refs = _own(node, request.qubits)
        try:
            for ref in refs:
                self.memories.discard(node, ref, now)
        finally:
            self.on_freed()
        return p.Done(request.id, now)


def _own(node: str, qubits: list[p.QubitRef]) -> list[mem.SlotRef]:
    """Slot handles of ``qubits``; ``NotOwner`` for any qubit of another node."""
    refs = [mem.SlotRef(q.node, q.slot) for q in qubits]
    for ref in refs:
        if ref.node != node:
            raise mem.NotOwner(node, ref)
    return refs
