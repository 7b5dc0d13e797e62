"""Cascade cores wired together in memory: efficiency targets, correctness, protocol checks."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.qkd.cascade import (
    SCHEDULES,
    CascadeDone,
    CascadeProtocolError,
    CascadeReceiver,
    CascadeSender,
    ParityQuery,
    ParityReply,
    PermutationCache,
    block_sizes,
    cascade_efficiency,
)
from nodes.qkd.verification import BlockVerifier

N = 10_000
QBER = 0.02
BLOCKS = 1000
WIRE = msgspec.msgpack.Decoder(ParityQuery | ParityReply | CascadeDone)


def reconcile(alice, bob, qber, schedule, seed=7, perms=None, wire=False):
    """Run both cores to completion; optionally through msgpack bytes like a real link."""
    tx = CascadeSender(alice, permutations=perms)
    rx = CascadeReceiver(bob, qber, schedule, seed=seed, permutations=perms)
    msg = rx.start()
    for _ in range(100_000):
        if wire:
            msg = WIRE.decode(msgspec.msgpack.encode(msg))
        if isinstance(msg, CascadeDone):
            break
        reply = tx.receive_query(msg)
        if wire:
            reply = WIRE.decode(msgspec.msgpack.encode(reply))
        msg = rx.receive_reply(reply)
    else:  # pragma: no cover
        raise AssertionError("Cascade did not finish")
    tx.receive_done(msg)
    assert rx.done and tx.done and rx.leaked_bits == tx.leaked_bits
    return rx, tx


def random_pair(rng, n, n_errors):
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    bob = alice.copy()
    bob[rng.choice(n, n_errors, replace=False)] ^= 1
    return alice, bob


def test_block_sizes():
    assert block_sizes("original", 0.02, 10_000) == [37, 74, 148, 296]
    assert block_sizes("yanetal", 0.02, 10_000) == [40, 200] + [5000] * 8
    assert block_sizes("option7", 0.02, 10_000) == [64, 256] + [5000] * 12
    assert block_sizes("original", 0.0, 100) == [100] * 4  # clipped to n
    with pytest.raises(ValueError):
        block_sizes("nope", 0.02, 100)


@pytest.fixture(scope="module", params=["original", "yanetal"])
def thousand_blocks(request):
    """1000 blocks of 10^4 bits with exactly 2% errors at random positions, then verified."""
    schedule = request.param
    rng = np.random.default_rng(2024)
    perms = PermutationCache(7, N)
    verifier_a, verifier_b = BlockVerifier(), BlockVerifier()
    effs, residual_delivered, failed = [], 0, 0
    for block in range(BLOCKS):
        alice, bob = random_pair(rng, N, round(QBER * N))
        rx, _ = reconcile(alice, bob, QBER, schedule, perms=perms)
        effs.append(cascade_efficiency(rx.leaked_bits, N, QBER))
        seed = rng.bytes(32)
        result = verifier_a.check(verifier_b.propose(block, rx.key, seed), alice)
        if verifier_b.conclude(result):
            residual_delivered += int(np.count_nonzero(rx.key != alice))
        else:
            failed += 1
            assert np.any(rx.key != alice)
    return schedule, np.array(effs), residual_delivered, failed


def test_efficiency_targets(thousand_blocks):
    schedule, effs, _, _ = thousand_blocks
    target = {"original": 1.20, "yanetal": 1.10}[schedule]
    assert 1.0 < effs.mean() <= target


def test_zero_residual_errors_after_verification(thousand_blocks):
    _, _, residual_delivered, failed = thousand_blocks
    assert residual_delivered == 0
    assert failed <= 0.02 * BLOCKS  # verification discards the rare unfinished blocks


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("qber", [0.01, 0.05, 0.10])
def test_schedules_correct_errors(schedule, qber):
    rng = np.random.default_rng(int(qber * 1000))
    n = 4000
    for _ in range(3):
        alice, bob = random_pair(rng, n, round(qber * n))
        rx, _ = reconcile(alice, bob, qber, schedule, seed=int(rng.integers(1 << 30)))
        assert rx.errors_corrected <= round(qber * n)
        assert np.count_nonzero(rx.key != alice) == round(qber * n) - rx.errors_corrected
    assert rx.leaked_bits < n  # Cascade never needs more parities than key bits here


def test_no_errors_leaks_only_top_level_parities():
    rng = np.random.default_rng(3)
    alice, bob = random_pair(rng, N, 0)
    rx, _ = reconcile(alice, bob, 0.02, "original")
    sizes = block_sizes("original", 0.02, N)
    expected = math.ceil(N / sizes[0]) + sum(math.ceil(N / k) - 1 for k in sizes[1:])
    assert rx.leaked_bits == expected and rx.errors_corrected == 0


def test_burst_errors_and_wire_encoding():
    rng = np.random.default_rng(4)
    alice = rng.integers(0, 2, 5000, dtype=np.uint8)
    bob = alice.copy()
    bob[1000:1040] ^= 1  # a burst: pass 1 blocks see many errors, the shuffles spread them
    rx, _ = reconcile(alice, bob, 0.01, "yanetal", wire=True)
    assert np.array_equal(rx.key, alice)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    error_fraction=st.floats(0.0, 0.15),
    schedule=st.sampled_from(SCHEDULES),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_flip_fixes_an_error(n, error_fraction, schedule, seed):
    rng = np.random.default_rng(seed)
    n_errors = int(error_fraction * n)
    alice, bob = random_pair(rng, n, n_errors)
    rx, _ = reconcile(alice, bob, max(error_fraction, 0.01), schedule, seed=seed)
    assert np.count_nonzero(rx.key != alice) == n_errors - rx.errors_corrected


def test_protocol_errors_are_reported():
    rng = np.random.default_rng(5)
    alice, bob = random_pair(rng, 1000, 20)
    tx = CascadeSender(alice)
    rx = CascadeReceiver(bob, 0.02, seed=1)
    query = rx.start()
    bad_round = msgspec.structs.replace(query, round=3)
    with pytest.raises(CascadeProtocolError):
        tx.receive_query(bad_round)
    out_of_range = msgspec.structs.replace(
        query,
        starts=np.array([0], "<u4").tobytes(),
        ends=np.array([1001], "<u4").tobytes(),
        passes=b"\x00",
    )
    with pytest.raises(CascadeProtocolError):
        tx.receive_query(out_of_range)
    reply = tx.receive_query(query)
    with pytest.raises(CascadeProtocolError):
        rx.receive_reply(msgspec.structs.replace(reply, count=reply.count + 1))
    with pytest.raises(CascadeProtocolError):
        tx.receive_done(CascadeDone(block_id=0, rounds=1, leaked_bits=reply.count + 5))


def test_sender_enforces_a_disclosure_budget():
    rng = np.random.default_rng(8)
    alice, bob = random_pair(rng, 2000, 40)
    tx = CascadeSender(alice, max_leaked_bits=60)
    rx = CascadeReceiver(bob, 0.02, "original", seed=1)
    with pytest.raises(CascadeProtocolError):
        msg = rx.start()
        while isinstance(msg, ParityQuery):
            msg = rx.receive_reply(tx.receive_query(msg))
    assert tx.leaked_bits <= 60


def test_sender_needs_only_the_seed_from_the_wire():
    # Alice builds her shuffles from the seed in the query; sharing a cache is an optimisation.
    rng = np.random.default_rng(6)
    alice, bob = random_pair(rng, 3000, 60)
    tx = CascadeSender(alice)  # no permutations given
    rx = CascadeReceiver(bob, 0.02, "original", seed=99)
    msg = rx.start()
    while isinstance(msg, ParityQuery):
        msg = rx.receive_reply(tx.receive_query(msg))
    tx.receive_done(msg)
    assert tx.leaked_bits == rx.leaked_bits
