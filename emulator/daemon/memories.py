"""Quantum memories of every node: slots with T1/T2 and a cutoff, and the joint states they hold.

The daemon owns one ``QuantumMemories``; nodes only hold ``SlotRef`` handles. Decoherence is lazy
(applied from the time since the last access whenever a state is touched), so idle memories cost
nothing; pairs stay on the Bell-diagonal fast path while that is exact and fall back to density
matrices otherwise (finite T1, general gates, single-qubit measurement). Time is an argument.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from emulator.daemon.slots import (  # noqa: F401 (re-exported: the memories' API)
    CutoffExpired,
    EmptySlot,
    Expired,
    MemoryFault,
    MemorySpec,
    NoFreeSlot,
    NotOwner,
    RegisterTooLarge,
    SlotRef,
)
from emulator.physics import bell_diagonal as bd
from emulator.physics import clocks
from emulator.physics import memories as decoherence
from emulator.physics import states as st


class _Group:
    """Joint state of some slots: Bell-diagonal ``coeffs`` (exactly 2 refs) or ``rho`` whose
    qubit ``i`` is ``refs[i]``; ``last`` = emulated time up to which decoherence is applied."""

    __slots__ = ("coeffs", "deadline", "last", "refs", "rho")

    def __init__(self, refs, coeffs, rho, last, deadline):
        self.refs: list[SlotRef] = refs
        self.coeffs: np.ndarray | None = coeffs
        self.rho: np.ndarray | None = rho
        self.last: float = last
        self.deadline: float = deadline

    def density(self) -> np.ndarray:
        if self.rho is None:
            self.rho = st.to_density(self.coeffs)
            self.coeffs = None
        return self.rho


class QuantumMemories:
    """All nodes' memory slots and the (possibly shared) states in them.

    Every method that acts for a node takes that node's name and raises ``NotOwner`` for a slot
    elsewhere. ``measurements`` counts measurements (single and Bell) per acting node,
    ``expired`` the qubits each node lost to the cutoff. Slot ownership lives here only: a
    stored pair may carry an ``owner`` (link name, pair id) that leaves with the slot.
    """

    def __init__(self, specs: Mapping[str, MemorySpec], max_register_qubits: int = 8) -> None:
        self._specs: dict[str, MemorySpec] = dict(specs)
        self._max_qubits = max_register_qubits
        self._group_of: dict[SlotRef, _Group] = {}
        self._stored_at: dict[SlotRef, float] = {}
        self._free: dict[str, list[int]] = {n: list(range(s.slots)) for n, s in specs.items()}
        self._deadlines: list[tuple[float, int, _Group]] = []
        self._seq = 0
        self.measurements: Counter[str] = Counter()
        self.expired: Counter[str] = Counter()
        self._owner: dict[SlotRef, tuple[str, int]] = {}
        self._held: Counter[tuple[str, str]] = Counter()  # (owner link, node) -> slots

    # -- bookkeeping --------------------------------------------------------------------------

    def spec(self, node: str) -> MemorySpec:
        return self._specs[node]

    def free_slots(self, node: str) -> int:
        return len(self._free[node])

    def owner(self, ref: SlotRef) -> tuple[str, int] | None:
        """(link, pair) that stored the qubit now in ``ref``, None if free or unowned."""
        return self._owner.get(ref)

    def held(self, link: str, node: str) -> int:
        """Slots of ``node`` holding a qubit stored by ``link`` (not yet freed)."""
        return self._held[(link, node)]

    def occupied(self, node: str) -> list[SlotRef]:
        return sorted(r for r in self._group_of if r.node == node)

    def _allocate(self, nodes: Sequence[str]) -> list[SlotRef]:
        need = Counter(nodes)
        for node, count in need.items():
            if node not in self._free:
                raise EmptySlot(f"unknown node {node!r}")
            if len(self._free[node]) < count:
                raise NoFreeSlot(f"node {node!r} has {len(self._free[node])} free slots")
        return [SlotRef(n, heapq.heappop(self._free[n])) for n in nodes]

    def _new_group(self, refs, coeffs, rho, now) -> _Group:
        deadline = math.inf
        for r in refs:
            cutoff = self._specs[r.node].cutoff
            if cutoff is not None:
                deadline = min(deadline, self._stored_at[r] + cutoff)
        group = _Group(list(refs), coeffs, rho, now, deadline)
        for r in refs:
            self._group_of[r] = group
        if deadline < math.inf:
            self._seq += 1
            heapq.heappush(self._deadlines, (deadline, self._seq, group))
        return group

    def _release(self, ref: SlotRef) -> None:
        del self._group_of[ref]
        del self._stored_at[ref]
        owner = self._owner.pop(ref, None)
        if owner is not None:
            self._held[(owner[0], ref.node)] -= 1
        heapq.heappush(self._free[ref.node], ref.slot)

    def _drop_group(self, group: _Group) -> None:
        for r in group.refs:
            self._release(r)
        group.refs = []

    def _check_owner(self, node: str, refs: Sequence[SlotRef]) -> None:
        for r in refs:
            if r.node != node:
                raise NotOwner(node, r)

    def _group(self, ref: SlotRef, now: float) -> _Group:
        """The group holding ``ref``, cutoff-checked and decohered up to ``now``."""
        group = self._group_of.get(ref)
        if group is None:
            raise EmptySlot(f"slot {ref.slot} of node {ref.node!r} holds no qubit")
        if now > group.deadline:
            expired = Expired(tuple(group.refs),
                              min(self._stored_at[r] for r in group.refs), now)
            self._drop_group(group)
            self.expired.update(r.node for r in expired.refs)
            raise CutoffExpired(expired)
        self._decohere(group, now)
        return group

    def _decohere(self, group: _Group, now: float) -> None:
        """Lazy T1/T2 (and precession at each node's clock detuning) from ``group.last`` to ``now`` on every qubit (each with its node's spec).

        A ``now`` earlier than the last access (clock skew between processes) applies nothing.
        Bell-diagonal pairs with T1 = inf stay on the fast path (dephasing keeps them
        Bell-diagonal); finite T1 converts them to a density matrix (amplitude damping does not).
        """
        dt = now - group.last
        if dt <= 0:
            return
        group.last = now
        specs = [self._specs[r.node] for r in group.refs]
        if any(s.detuning_hz for s in specs):
            # a detuned clock: the qubit precesses (a coherent Z rotation, not Bell-diagonal)
            rho = group.density()
            for q, s in enumerate(specs):
                rho = decoherence.memory_decay(rho, q, dt, s.t1, s.t2)
                if s.detuning_hz:
                    rho = clocks.precess(rho, q, s.detuning_hz, dt)
            group.rho = rho
            return
        if group.coeffs is not None and all(math.isinf(s.t1) for s in specs):
            c = group.coeffs
            for s in specs:
                c = decoherence.memory_dephase(c, dt, s.t2)
            group.coeffs = c
            return
        if all(math.isinf(s.t1) and math.isinf(s.t2) for s in specs):
            return
        rho = group.density()
        for q, s in enumerate(specs):
            rho = decoherence.memory_decay(rho, q, dt, s.t1, s.t2)
        group.rho = rho

    def _merge(self, groups: Sequence[_Group], now: float) -> _Group:
        """One density-matrix group holding all qubits of ``groups`` (already decohered)."""
        unique: list[_Group] = []
        for g in groups:
            if not any(g is u for u in unique):
                unique.append(g)
        if len(unique) == 1:
            unique[0].density()
            return unique[0]
        refs = [r for g in unique for r in g.refs]
        if len(refs) > self._max_qubits:
            raise RegisterTooLarge(f"{len(refs)} qubits > limit {self._max_qubits}")
        rho = st.tensor(*(g.density() for g in unique))
        for g in unique:
            g.refs = []
        return self._new_group(refs, None, rho, now)

    def _remove_qubits(self, group: _Group, positions: Sequence[int], rho: np.ndarray,
                       now: float) -> None:
        """Free the qubits at ``positions`` of ``group``; ``rho`` is the state to keep tracing from."""
        gone = [group.refs[i] for i in positions]
        rest = [r for i, r in enumerate(group.refs) if i not in positions]
        for r in gone:
            self._release(r)
        group.refs = []
        if rest:
            keep = [i for i in range(len(gone) + len(rest)) if i not in positions]
            self._new_group(rest, None, st.ptrace(rho, keep), now)

    # -- storing ------------------------------------------------------------------------------

    def store_pair(self, node_a: str, node_b: str, coeffs: Sequence[float], now: float,
                   owner: tuple[str, int] | None = None) -> tuple[SlotRef, SlotRef]:
        """Put a new pair with Bell-diagonal ``coeffs`` (order Phi+, Psi-, Psi+, Phi-) into the
        lowest free slot of each node (heralded generation), owned by ``owner`` = (link,
        pair id) until each slot is freed. Raises ``NoFreeSlot``."""
        a, b = self._allocate([node_a, node_b])
        self._stored_at[a] = self._stored_at[b] = now
        if owner is not None:
            for ref in (a, b):
                self._owner[ref] = owner
                self._held[(owner[0], ref.node)] += 1
        self._new_group([a, b], np.asarray(coeffs, dtype=float), None, now)
        return a, b

    def store_density(self, nodes: Sequence[str], rho: np.ndarray,
                      now: float) -> tuple[SlotRef, ...]:
        """Put a state of ``len(nodes)`` qubits into one free slot per entry of ``nodes``."""
        if st.n_qubits(rho) != len(nodes):
            raise ValueError("rho does not have one qubit per node")
        refs = self._allocate(list(nodes))
        for r in refs:
            self._stored_at[r] = now
        self._new_group(refs, None, np.array(rho, dtype=complex), now)
        return tuple(refs)

    # -- operations a node asks for ----------------------------------------------------------

    def touch(self, ref: SlotRef, now: float) -> None:
        """Apply cutoff and decoherence up to ``now`` to the state holding ``ref``."""
        self._group(ref, now)

    def apply_pauli(self, node: str, ref: SlotRef, pauli: str, now: float) -> None:
        """Pauli ``"I" "X" "Y" "Z"`` on ``ref`` (a correction); stays on the fast path."""
        self._check_owner(node, [ref])
        group = self._group(ref, now)
        if group.coeffs is not None:
            group.coeffs = bd.pauli(group.coeffs, bd.BELL_PAULI.index(pauli))
        else:
            group.rho = st.apply_gate(group.rho, st.PAULIS[pauli], [group.refs.index(ref)])

    def apply_gate(self, node: str, refs: Sequence[SlotRef], gate: np.ndarray,
                   now: float) -> None:
        """Gate on ``refs`` (``refs[0]`` = most significant); joins their states if needed."""
        self._check_owner(node, refs)
        groups = [self._group(r, now) for r in refs]
        group = self._merge(groups, now)
        group.rho = st.apply_gate(group.rho, gate, [group.refs.index(r) for r in refs])

    def measure(self, node: str, ref: SlotRef, basis: str, now: float,
                rng: np.random.Generator) -> int:
        """Destructive measurement of ``ref`` in ``basis`` ("Z", "X", "Y"); frees the slot."""
        self._check_owner(node, [ref])
        group = self._group(ref, now)
        q = group.refs.index(ref)
        outcome, post = st.measure(group.density(), q, basis, rng)
        self.measurements[node] += 1
        self._remove_qubits(group, [q], post, now)
        return outcome

    def bell_measure(self, node: str, ref1: SlotRef, ref2: SlotRef, now: float,
                     rng: np.random.Generator) -> tuple[int, int]:
        """Bell-state measurement of two slots of ``node`` (a swap when they hold halves of two
        pairs); returns ``(m1, m2)`` and frees both slots. The partners are left uncorrected:
        whoever holds them applies ``X**m2 Z**m1`` (``apply_pauli``)."""
        self._check_owner(node, [ref1, ref2])
        if ref1 == ref2:
            raise ValueError("Bell measurement needs two different slots")
        g1, g2 = self._group(ref1, now), self._group(ref2, now)
        self.measurements[node] += 1
        if g1 is not g2 and g1.coeffs is not None and g2.coeffs is not None:
            # Bell-diagonal inputs: outcomes are uniform, post-state by Pauli composition
            k = int(rng.integers(4))
            m1, m2 = bd.bell_outcome(k)
            a = g1.refs[1 - g1.refs.index(ref1)]
            c = g2.refs[1 - g2.refs.index(ref2)]
            coeffs = bd.swap_outcome(g1.coeffs, g2.coeffs, m1, m2)
            g1.refs = g2.refs = []
            del self._group_of[a], self._group_of[c]
            self._release(ref1)
            self._release(ref2)
            self._new_group([a, c], coeffs, None, now)
            return m1, m2
        group = self._merge([g1, g2], now)
        q1, q2 = group.refs.index(ref1), group.refs.index(ref2)
        m1, m2, post = st.bell_measure(group.rho, q1, q2, rng)
        rest = [i for i in range(len(group.refs)) if i not in (q1, q2)]
        self._release(ref1)
        self._release(ref2)
        remaining = [group.refs[i] for i in rest]
        group.refs = []
        if remaining:
            for r in remaining:
                del self._group_of[r]
            self._new_group(remaining, None, post, now)
        return m1, m2

    def discard(self, node: str, ref: SlotRef, now: float) -> None:
        """Free ``ref``; its partners keep their reduced state."""
        self._check_owner(node, [ref])
        group = self._group(ref, now)
        self._remove_qubits(group, [group.refs.index(ref)], group.density(), now)

    def move(self, ref: SlotRef, to_node: str, now: float) -> SlotRef:
        """Move the qubit in ``ref`` into a free slot of ``to_node`` (a photon leaving one
        memory for a fibre or entering another); its joint state with its partners is kept.
        Raises ``NoFreeSlot`` (nothing moved)."""
        group = self._group(ref, now)
        (new,) = self._allocate([to_node])
        group.refs[group.refs.index(ref)] = new
        self._group_of[new] = group
        self._stored_at[new] = now
        self._release(ref)
        return new

    # -- oracle views for the daemon's reports (never sent to nodes) --------------------------

    def state(self, refs: Sequence[SlotRef], now: float) -> np.ndarray:
        """Density matrix of ``refs`` (in that order) at ``now``, other qubits traced out."""
        groups = [self._group(r, now) for r in refs]
        if any(g is not groups[0] for g in groups):
            raise ValueError("the slots do not share one state")
        group = groups[0]
        rho = group.rho if group.coeffs is None else st.to_density(group.coeffs)
        idx = [group.refs.index(r) for r in refs]
        reduced = st.ptrace(rho, idx)
        return st.permute(reduced, np.argsort(np.argsort(idx)).tolist())

    def pair_coefficients(self, ref_a: SlotRef, ref_b: SlotRef, now: float) -> np.ndarray:
        """Bell-diagonal coefficients of the pair (exact, or its twirl for other states)."""
        group = self._group(ref_a, now)
        if group.coeffs is not None and self._group_of.get(ref_b) is group:
            return group.coeffs.copy()
        return st.from_density(self.state([ref_a, ref_b], now))

    def fidelity(self, ref_a: SlotRef, ref_b: SlotRef, now: float, bell: int = 0) -> float:
        """Fidelity of the pair with Bell state ``bell`` (default Phi+)."""
        return float(self.pair_coefficients(ref_a, ref_b, now)[bell])

    # -- timers -------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """Earliest emulated time at which a stored state passes its cutoff (None if never)."""
        while self._deadlines:
            deadline, _, group = self._deadlines[0]
            if group.refs and group.deadline == deadline:
                return deadline
            heapq.heappop(self._deadlines)
        return None

    def expire(self, now: float) -> list[Expired]:
        """Discard every state older than its cutoff at ``now``; report each one."""
        out = []
        while (deadline := self.next_deadline()) is not None and deadline < now:
            _, _, group = heapq.heappop(self._deadlines)
            out.append(Expired(tuple(group.refs),
                               min(self._stored_at[r] for r in group.refs), now))
            self.expired.update(r.node for r in group.refs)
            self._drop_group(group)
        return out
