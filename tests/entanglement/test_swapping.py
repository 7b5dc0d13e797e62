"""Swapping bookkeeping and fidelity estimation: EndTracker/RepeaterCore driven by real
Bell measurements in ``QuantumMemories`` (the test alone reads the state as an oracle)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from emulator.daemon.memories import MemorySpec, QuantumMemories, SlotRef
from emulator.physics import bell_diagonal as bd
from emulator.physics import memories
from emulator.physics import states as st
from nodes.entanglement import estimate
from nodes.entanglement.swapping import EndTracker, Held, RepeaterCore, decoder, encoder

NODES = ["a", "r1", "r2", "r3", "b"]


def make_chain(mem: QuantumMemories, fidelities, t: float = 0.0):
    """One pair per hop; returns per hop (left Held, right Held) with pair id = hop index."""
    hops = []
    for k, f in enumerate(fidelities):
        ra, rb = mem.store_pair(NODES[k], NODES[k + 1], bd.werner_coefficients(f), t)
        hops.append((Held(100 + k, ra.slot, t), Held(100 + k, rb.slot, t)))
    return hops


@pytest.mark.parametrize("seed", range(6))
def test_frame_from_records_restores_phi_plus(seed: int) -> None:
    rng = np.random.default_rng(seed)
    fs = [0.97, 0.9, 0.95, 0.85]
    mem = QuantumMemories({n: MemorySpec(4) for n in NODES})
    hops = make_chain(mem, fs)
    records = []
    for k, node in enumerate(NODES[1:-1]):
        core = RepeaterCore()
        core.add("left", hops[k][1])
        core.add("right", hops[k + 1][0])
        left, right = core.next_swap()
        m1, m2 = mem.bell_measure(node, SlotRef(node, left.slot), SlotRef(node, right.slot), 1.0, rng)
        rec = core.record(node, left, right, m1, m2, 1.0)
        records.append(decoder.decode(encoder.encode(rec)))  # through the wire format
    end_a, end_b = EndTracker("a", 3), EndTracker("b", 3)
    order = records[:]
    random.Random(seed).shuffle(order)
    got_a = end_a.own(hops[0][0]) + [e for r in order for e in end_a.record(r)]
    got_b = [e for r in order for e in end_b.record(r)] + end_b.own(hops[-1][1])
    (ea,), (eb,) = got_a, got_b
    assert (ea.far_pair, eb.far_pair) == (103, 100)
    assert ea.frame == eb.frame
    # both ends learn each repeater's storage time (two halves from t = 0 to the swap at 1 s)
    assert ea.stored == eb.stored == {"r1": 2.0, "r2": 2.0, "r3": 2.0}
    ref_a, ref_b = SlotRef("a", ea.mine.slot), SlotRef("b", eb.mine.slot)
    mem.apply_pauli("b", ref_b, bd.BELL_PAULI[eb.frame], 1.0)
    assert mem.fidelity(ref_a, ref_b, 1.0) == pytest.approx(bd.werner_chain(fs), abs=1e-12)
    assert end_a.waiting() == end_b.waiting() == 0


def test_no_repeaters_pairs_are_end_to_end_at_once() -> None:
    tracker = EndTracker("a", 0)
    (e,) = tracker.own(Held(7, 0, 0.0))
    assert (e.far_pair, e.frame, e.stored) == (7, 0, {})


def test_repeater_record_storage_time_and_fifo() -> None:
    core = RepeaterCore()
    core.add("left", Held(1, 0, 0.0))
    core.add("left", Held(2, 1, 0.1))
    assert core.next_swap() is None
    core.add("right", Held(3, 2, 0.2))
    left, right = core.next_swap()
    assert (left.pair, right.pair) == (1, 3)
    rec = core.record("r", left, right, 1, 0, 0.3)
    assert rec.stored == pytest.approx(0.3 + 0.1)
    assert core.swaps == 1


@pytest.mark.parametrize("frame", range(4))
def test_flips_match_pauli_anticommutation(frame: int) -> None:
    pauli = st.PAULIS[bd.BELL_PAULI[frame]]
    for basis in "XYZ":
        anti = np.allclose(pauli @ st.PAULIS[basis], -st.PAULIS[basis] @ pauli)
        assert estimate.flips(frame, basis) == int(anti)


def test_fidelity_estimate_of_sampled_werner_pairs() -> None:
    """Sample both halves of Werner pairs through the state engine; 4 standard errors."""
    rng = np.random.default_rng(3)
    f0, n = 0.8, 1500
    rho = st.werner(f0)
    samples = {}
    for basis in "XYZ":
        bits = []
        for _ in range(n):
            a, post = st.measure(rho, 0, basis, rng)
            b, _ = st.measure(post, 1, basis, rng)
            bits.append((a, b))
        arr = np.array(bits, dtype=np.uint8)
        samples[basis] = (arr[:, 0], arr[:, 1])
    f, se = estimate.fidelity_from_correlations(samples)
    assert se == pytest.approx(math.sqrt(3 * (1 - ((4 * f0 - 1) / 3) ** 2) / n) / 4, rel=0.1)
    assert abs(f - f0) < 4 * se


def test_dephased_werner_matches_memories() -> None:
    t2 = {"a": 0.2, "b": 0.5}
    mem = QuantumMemories({n: MemorySpec(2, t2=t2[n]) for n in "ab"})
    ra, rb = mem.store_pair("a", "b", bd.werner_coefficients(0.9), 0.0)
    t = 0.13
    assert mem.fidelity(ra, rb, t) == pytest.approx(
        memories.dephased_werner(0.9, t / 0.2 + t / 0.5), abs=1e-12)


def test_chsh_estimator_on_werner_correlations() -> None:
    """S from the estimator, fed the exact correlations of the Werner density matrix at the
    bbm92 settings (a = Z, X; b = (Z +- X)/sqrt2), equals the Werner formula."""
    def axis(theta: float) -> np.ndarray:
        return math.cos(theta) * st.Z + math.sin(theta) * st.X

    for f in (1.0, 0.9, 0.7):
        rho = st.werner(f)
        e = {(i, j): st.expectation(rho, np.kron(axis(a), axis(b)), [0, 1])
             for i, a in enumerate((0.0, math.pi / 2))
             for j, b in enumerate((math.pi / 4, -math.pi / 4))}
        assert estimate.chsh_from_correlations(e) == pytest.approx(bd.werner_chsh(f), abs=1e-9)
