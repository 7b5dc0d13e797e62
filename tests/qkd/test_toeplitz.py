"""Toeplitz hashing: the FFT result equals the naive GF(2) matrix product."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.qkd.toeplitz import (
    ToeplitzHasher,
    seed_length,
    toeplitz_hash,
    toeplitz_hash_naive,
)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 3000), frac=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_fft_equals_naive_gf2_product(n, frac, seed):
    rng = np.random.default_rng(seed)
    m = int(frac * n)
    key = rng.integers(0, 2, n, dtype=np.uint8)
    toeplitz_seed = rng.integers(0, 2, seed_length(n, m), dtype=np.uint8)
    assert np.array_equal(
        toeplitz_hash(key, toeplitz_seed, m), toeplitz_hash_naive(key, toeplitz_seed, m)
    )


def test_matrix_layout_matches_docstring():
    # T[i, j] = s[i - j + n - 1]: hashing the unit vector e_j returns column j.
    n, m = 5, 3
    s = np.array([1, 0, 0, 1, 1, 0, 1], dtype=np.uint8)
    for j in range(n):
        e = np.zeros(n, dtype=np.uint8)
        e[j] = 1
        column = toeplitz_hash(e, s, m)
        assert column.tolist() == [int(s[i - j + n - 1]) for i in range(m)]


def test_dense_inputs_at_large_size_stay_exact():
    # all-ones key and seed give the largest convolution values (= n): worst case for rounding
    n, m = 200_000, 100_000
    key = np.ones(n, dtype=np.uint8)
    s = np.ones(seed_length(n, m), dtype=np.uint8)
    assert np.all(toeplitz_hash(key, s, m) == n % 2)
    rng = np.random.default_rng(1)
    key = rng.integers(0, 2, n, dtype=np.uint8)
    s = rng.integers(0, 2, seed_length(n, m), dtype=np.uint8)
    out = ToeplitzHasher(s, n, m).hash(key)
    # spot-check rows against direct GF(2) inner products
    for i in (0, 1, 77, m // 2, m - 1):
        row = s[i + n - 1 - np.arange(n)]
        assert out[i] == int(np.dot(row.astype(np.int64), key)) & 1


def test_hasher_is_linear_over_gf2():
    rng = np.random.default_rng(2)
    n, m = 5000, 1200
    h = ToeplitzHasher(rng.integers(0, 2, seed_length(n, m), dtype=np.uint8), n, m)
    a, b = (rng.integers(0, 2, n, dtype=np.uint8) for _ in range(2))
    assert np.array_equal(h.hash(a ^ b), h.hash(a) ^ h.hash(b))


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        toeplitz_hash(np.zeros(10, np.uint8), np.zeros(10, np.uint8), 5)
    h = ToeplitzHasher(np.zeros(14, np.uint8), 10, 5)
    with pytest.raises(ValueError):
        h.hash(np.zeros(9, np.uint8))
    assert toeplitz_hash(np.ones(4, np.uint8), np.zeros(3, np.uint8), 0).shape == (0,)
