"""Daemon state level over real TCP: heralded generation (timing, rate, Werner statistics),
ownership (a node may act only on its own qubits), decoherence while stored, teleportation,
cutoff. Tolerances are 4 binomial/normal sigma of the sample."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import trio

from emulator.child_config import DaemonConfig, DaemonEntanglementLink
from emulator.daemon import protocol as p
from emulator.daemon.server import serve
from emulator.physics.channels import FIBRE_GROUP_DELAY_S_PER_KM
from emulator.physics.heralding import heralding_probability
from emulator.scenario import LinkEntanglement, NodeMemory
from nodes.daemon_client import DaemonError, open_daemon

TOKENS = {"alice": "tok-a", "bob": "tok-b", "eve": "tok-e"}
F0 = 0.9


def make_config(t2_s: float | None = None, cutoff_s: float | None = None, slots: int = 4096,
                rate: float = 1e5) -> DaemonConfig:
    memory = NodeMemory(slots=slots, t2_s=t2_s, t1_s=None, cutoff_s=cutoff_s)
    ent = LinkEntanglement(attempt_rate_hz=rate, source_fidelity=F0, detector_efficiency=0.9)
    link = DaemonEntanglementLink("ab", "alice", "bob", 10.0, ent)
    return DaemonConfig("test", time.monotonic(), 1.0, 7, dict(TOKENS), [],
                        memories={"alice": memory, "bob": memory, "eve": memory},
                        entanglement_links=[link])


async def collect(client, n: int, timeout_s: float = 20.0) -> list[p.DeliveredPair]:
    """``n`` delivered pairs of link "ab", awaited in as many PairAwait rounds as it takes."""
    out: list[p.DeliveredPair] = []
    with trio.fail_after(timeout_s):
        while len(out) < n:
            reply = await client.request(p.PairAwait, link="ab", max=n - len(out))
            out.extend(reply.pairs)
    return out




def ref(node: str, pair: p.DeliveredPair) -> p.QubitRef:
    return p.QubitRef(node, pair.slot)


async def test_heralding_timing_rate_and_werner_statistics(nursery) -> None:
    config = make_config()
    daemon = await nursery.start(serve, config)
    async with (open_daemon("127.0.0.1", daemon.port, "alice", "tok-a") as alice,
                open_daemon("127.0.0.1", daemon.port, "bob", "tok-b") as bob):
        started = await alice.request(p.EntangleStart, link="ab")
        e = config.entanglement_links[0].entanglement
        p_exp = heralding_probability(10.0, e.attenuation_db_per_km, e.detector_efficiency,
                                      e.bsm_efficiency)
        assert started.p_success == pytest.approx(0.5 * 0.81 * 10 ** (-0.2))
        assert started.delay_s == pytest.approx(10 * FIBRE_GROUP_DELAY_S_PER_KM)
        n = 2000
        pairs_a, pairs_b = await collect(alice, n), await collect(bob, n)
        # both ends see the same pair ids, in the same order, with the herald one delay later
        assert [x.pair for x in pairs_a] == [x.pair for x in pairs_b]
        for x in pairs_a:
            assert x.t_herald - x.t_stored == pytest.approx(started.delay_s, abs=1e-9)
        # emission gaps: geometric number of attempts / rate; mean 1/(p rate), 4 sigma
        t = np.array([x.t_stored for x in pairs_a])
        gaps = np.diff(t) * e.attempt_rate_hz
        sigma = math.sqrt((1 - p_exp) / p_exp**2 / gaps.size)
        assert abs(gaps.mean() - 1 / p_exp) < 4 * sigma
        # Werner pairs: <ZZ> = <XX> = -<YY> = (4F-1)/3 (both ends measure the same basis)
        bases = "ZXY"
        equal = {b: 0 for b in bases}
        total = {b: 0 for b in bases}
        for k, basis in enumerate(bases):
            chunk = range(k, n, 3)
            ma = await alice.request(p.QubitMeasure, qubits=[ref("alice", pairs_a[i])
                                                             for i in chunk], bases=[basis])
            mb = await bob.request(p.QubitMeasure, qubits=[ref("bob", pairs_b[i])
                                                           for i in chunk], bases=[basis])
            a, b = np.frombuffer(ma.outcomes, np.uint8), np.frombuffer(mb.outcomes, np.uint8)
            equal[basis] = int((a == b).sum())
            total[basis] = a.size
        e_w = (4 * F0 - 1) / 3
        for basis, sign in (("Z", 1), ("X", 1), ("Y", -1)):
            q = (1 + sign * e_w) / 2
            sigma = math.sqrt(q * (1 - q) / total[basis])
            assert abs(equal[basis] / total[basis] - q) < 4 * sigma, basis
        stats = await alice.request(p.MemoryStatsRequest)
        assert stats.measurements == {"alice": n}  # its own count only
        await alice.request(p.EntangleStop, link="ab")


async def test_nodes_act_only_on_their_own_qubits(nursery) -> None:
    daemon = await nursery.start(serve, make_config())
    async with (open_daemon("127.0.0.1", daemon.port, "alice", "tok-a") as alice,
                open_daemon("127.0.0.1", daemon.port, "bob", "tok-b") as bob,
                open_daemon("127.0.0.1", daemon.port, "eve", "tok-e") as eve):
        await bob.request(p.EntangleStart, link="ab", max_pending=2)
        (pa,) = (await alice.request(p.PairAwait, link="ab", max=1)).pairs
        (pb,) = (await bob.request(p.PairAwait, link="ab", max=1)).pairs
        await bob.request(p.EntangleStop, link="ab")  # so no new pair refills a freed slot
        theirs = ref("bob", pb)
        attempts = [
            (alice, p.QubitMeasure, {"qubits": [theirs], "bases": ["Z"]}),
            (alice, p.QubitGate, {"gate": "X", "qubits": [theirs]}),
            (alice, p.QubitGate, {"gate": "CNOT", "qubits": [ref("alice", pa), theirs]}),
            (alice, p.BellMeasure, {"q1": ref("alice", pa), "q2": theirs}),
            (alice, p.QubitDiscard, {"qubits": [theirs]}),
            (eve, p.QubitMeasure, {"qubits": [theirs], "bases": ["Z"]}),
            (eve, p.EntangleStart, {"link": "ab"}),
            (eve, p.PairAwait, {"link": "ab"}),
        ]
        for client, kind, fields in attempts:
            with pytest.raises(DaemonError) as info:
                await client.request(kind, **fields)
            assert info.value.code == "not_allowed", kind
        stats = await alice.request(p.MemoryStatsRequest)
        assert stats.measurements == {}  # nothing was touched
        # the pair is intact: both ends measure Z and agree with the Werner probability
        ma = await alice.request(p.QubitMeasure, qubits=[ref("alice", pa)], bases=["Z"])
        mb = await bob.request(p.QubitMeasure, qubits=[theirs], bases=["Z"])
        assert len(ma.outcomes) == len(mb.outcomes) == 1
        with pytest.raises(DaemonError) as info:
            await bob.request(p.QubitMeasure, qubits=[theirs], bases=["Z"])
        assert info.value.code == "empty_slot"


async def test_dephasing_while_stored_matches_t2(nursery) -> None:
    """Each half dephases from emission to its measurement: <XX> = (4F-1)/3 exp(-(tA+tB)/T2)."""
    t2 = 0.05
    daemon = await nursery.start(serve, make_config(t2_s=t2))
    async with (open_daemon("127.0.0.1", daemon.port, "alice", "tok-a") as alice,
                open_daemon("127.0.0.1", daemon.port, "bob", "tok-b") as bob):
        await alice.request(p.EntangleStart, link="ab", max_pending=600)
        n = 600
        pairs_a, pairs_b = await collect(alice, n), await collect(bob, n)
        await alice.request(p.EntangleStop, link="ab")
        await trio.sleep(0.03)  # let them dephase noticeably, then measure in X
        ma = await alice.request(p.QubitMeasure, qubits=[ref("alice", x) for x in pairs_a],
                                 bases=["X"])
        await trio.sleep(0.02)
        mb = await bob.request(p.QubitMeasure, qubits=[ref("bob", x) for x in pairs_b],
                               bases=["X"])
        a, b = np.frombuffer(ma.outcomes, np.uint8), np.frombuffer(mb.outcomes, np.uint8)
        stored = np.array([x.t_stored for x in pairs_a])
        lam = np.exp(-((ma.t - stored) + (mb.t - stored)) / t2)
        q = (1 + (4 * F0 - 1) / 3 * lam) / 2  # P(equal outcomes) per pair
        sigma = math.sqrt(float((q * (1 - q)).sum()))
        assert abs(int((a == b).sum()) - q.sum()) < 4 * sigma
        assert q.mean() < 0.75  # well below the undecayed 0.933


async def test_teleportation_with_werner_resource(nursery) -> None:
    """Prepare psi, BSM with alice's half, correct at bob, measure along psi: F = (2F0+1)/3."""
    daemon = await nursery.start(serve, make_config())
    theta, phi = 1.1, 0.7
    n = 400
    async with (open_daemon("127.0.0.1", daemon.port, "alice", "tok-a") as alice,
                open_daemon("127.0.0.1", daemon.port, "bob", "tok-b") as bob):
        await alice.request(p.EntangleStart, link="ab", max_pending=64)
        hits = 0
        for _ in range(n):
            (pa,) = (await alice.request(p.PairAwait, link="ab", max=1)).pairs
            (pb,) = (await bob.request(p.PairAwait, link="ab", max=1)).pairs
            prepared = await alice.request(p.QubitPrepare, theta=theta, phi=phi)
            bsm = await alice.request(p.BellMeasure, q1=prepared.qubit, q2=ref("alice", pa))
            q = ref("bob", pb)
            if bsm.m1:
                await bob.request(p.QubitGate, gate="Z", qubits=[q])
            if bsm.m2:
                await bob.request(p.QubitGate, gate="X", qubits=[q])
            # rotate psi onto |0>: RZ(-phi) then RY(-theta), measure Z
            await bob.request(p.QubitGate, gate="RZ", qubits=[q], angle=-phi)
            await bob.request(p.QubitGate, gate="RY", qubits=[q], angle=-theta)
            m = await bob.request(p.QubitMeasure, qubits=[q], bases=["Z"])
            hits += m.outcomes[0] == 0
        f = (2 * F0 + 1) / 3
        assert abs(hits / n - f) < 4 * math.sqrt(f * (1 - f) / n)


async def test_cutoff_discards_and_reports_expired(nursery) -> None:
    daemon = await nursery.start(serve, make_config(cutoff_s=0.02, slots=8))
    async with (open_daemon("127.0.0.1", daemon.port, "alice", "tok-a") as alice,
                open_daemon("127.0.0.1", daemon.port, "bob", "tok-b") as bob):
        await alice.request(p.EntangleStart, link="ab", max_pending=1)
        (pa,) = (await alice.request(p.PairAwait, link="ab", max=1)).pairs
        await trio.sleep(0.05)
        with pytest.raises(DaemonError) as info:
            await alice.request(p.QubitMeasure, qubits=[ref("alice", pa)], bases=["Z"])
        assert info.value.code in ("expired", "empty_slot")
        stats = await bob.request(p.MemoryStatsRequest)
        assert stats.pairs_expired >= 1
        # generation resumed after the slot was freed: a fresh pair arrives
        (pb,) = (await bob.request(p.PairAwait, link="ab", max=1)).pairs
        assert pb.pair != pa.pair or pb.t_stored > pa.t_stored


async def test_bad_gate_and_unknown_link_are_request_errors(nursery) -> None:
    daemon = await nursery.start(serve, make_config())
    async with open_daemon("127.0.0.1", daemon.port, "alice", "tok-a") as alice:
        prepared = await alice.request(p.QubitPrepare)
        for kind, fields, code in [
            (p.QubitGate, {"gate": "FOO", "qubits": [prepared.qubit]}, "bad_request"),
            (p.QubitGate, {"gate": "CNOT", "qubits": [prepared.qubit]}, "bad_request"),
            (p.QubitMeasure, {"qubits": [prepared.qubit], "bases": ["W"]}, "bad_request"),
            (p.EntangleStart, {"link": "nope"}, "unknown"),
        ]:
            with pytest.raises(DaemonError) as info:
                await alice.request(kind, **fields)
            assert info.value.code == code
        m = await alice.request(p.QubitMeasure, qubits=[prepared.qubit], bases=["Z"])
        assert m.outcomes == b"\x00"  # |0> prepared, measured in Z
