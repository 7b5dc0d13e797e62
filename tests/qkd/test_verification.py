"""Verification hash: equal keys match, any single-bit difference is caught, mismatches count."""

from __future__ import annotations

import numpy as np
import pytest

from nodes.qkd.verification import (
    PRIME,
    BlockVerifier,
    VerificationError,
    VerifyResult,
    collision_bound,
    polynomial_hash,
    tag_leak_bits,
    verification_tag,
)


def test_polynomial_hash_against_plain_horner():
    bits = np.array([1, 0, 1] + [0] * 60 + [1], dtype=np.uint8)  # 64 bits -> 2 chunks of 56
    r = 123456789
    padded = np.concatenate([bits, np.zeros(48, np.uint8)])
    c1 = int("".join(map(str, padded[:56])), 2)
    c2 = int("".join(map(str, padded[56:112])), 2)
    expected = ((64 * r + c1) * r + c2) % PRIME
    assert polynomial_hash(bits, r) == expected


def test_equal_keys_match_and_every_single_bit_flip_is_detected():
    rng = np.random.default_rng(0)
    key = rng.integers(0, 2, 3000, dtype=np.uint8)
    seed = rng.bytes(32)
    tag = verification_tag(key, seed)
    assert verification_tag(key.copy(), seed) == tag
    for i in range(key.shape[0]):  # every position, not a sample
        key[i] ^= 1
        assert verification_tag(key, seed) != tag
        key[i] ^= 1


def test_length_is_bound_into_the_tag():
    seed = bytes(32)
    a = np.zeros(100, np.uint8)
    b = np.zeros(101, np.uint8)
    assert verification_tag(a, seed) != verification_tag(b, seed)


def test_block_verifier_reports_forced_mismatch():
    rng = np.random.default_rng(1)
    key = rng.integers(0, 2, 10_000, dtype=np.uint8)
    bad = key.copy()
    bad[4321] ^= 1
    alice, bob = BlockVerifier(), BlockVerifier()
    result = alice.check(bob.propose(7, bad, rng.bytes(32)), key)
    assert result == VerifyResult(block_id=7, ok=False)
    assert bob.conclude(result) is False
    assert (alice.blocks_failed, bob.blocks_failed) == (1, 1)
    assert bob.conclude(alice.check(bob.propose(8, key, rng.bytes(32)), key)) is True
    assert (alice.blocks_ok, bob.blocks_ok) == (1, 1)
    with pytest.raises(VerificationError):
        bob.conclude(VerifyResult(block_id=99, ok=True))


def test_bounds_and_leak():
    assert tag_leak_bits(122) == 122 and tag_leak_bits(64) == 122 and tag_leak_bits(61) == 61
    n = 10**6
    assert collision_bound(n, 122) <= (n / 2**61) ** 2
    assert collision_bound(n, 61) <= n / 2**61
