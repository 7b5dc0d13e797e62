"""The key store: keys kept under unique ids, totals, and a digest that compares two ends'
keys without revealing them (order- and length-sensitive)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from nodes.qkd.keystore import KeyStore, bits_digest


def test_keys_are_kept_under_unique_ids_and_counted() -> None:
    store = KeyStore("bob")
    store.add("l/0", np.array([1, 0, 1], np.uint8))
    store.add("l/1", np.array([1], np.uint8))
    assert store.total_bits == 4 and list(store.keys) == ["l/0", "l/1"]
    with pytest.raises(KeyError):  # a block delivered twice is a local bug: loud
        store.add("l/0", np.array([0], np.uint8))
    assert store.total_bits == 4


def test_digest_is_sha256_of_packed_bits_and_count() -> None:
    bits = np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], np.uint8)
    expected = hashlib.sha256(bytes([0b10110000, 0b10000000]) + (9).to_bytes(8, "little"))
    assert bits_digest(bits) == expected.hexdigest()
    # trailing zeros change the count, so the digest
    assert bits_digest(bits) != bits_digest(np.append(bits, 0))
    assert KeyStore("x").digest() == bits_digest(np.zeros(0, np.uint8))


def test_equal_keys_give_equal_digests_and_order_matters() -> None:
    rng = np.random.default_rng(4)
    k0, k1 = rng.integers(0, 2, 1000, np.uint8), rng.integers(0, 2, 500, np.uint8)
    a, b, c = KeyStore("b"), KeyStore("a"), KeyStore("a")
    for store, order in ((a, (k0, k1)), (b, (k0, k1)), (c, (k1, k0))):
        for i, key in enumerate(order):
            store.add(f"l/{i}", key)
    assert a.digest() == b.digest() == bits_digest(np.concatenate([k0, k1]))
    assert a.digest() != c.digest()
    flipped = k1.copy()
    flipped[7] ^= 1
    d = KeyStore("b")
    d.add("l/0", k0)
    d.add("l/1", flipped)
    assert d.digest() != a.digest()
