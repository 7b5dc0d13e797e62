"""Slot PRF: deterministic, keyed, and its bit fields unbiased and independent (4 sigma)."""

from __future__ import annotations

import numpy as np
import pytest

from emulator.prf import intensity_thresholds, sender_choices, slot_words

N = 1_000_000
SLOTS = np.arange(N, dtype=np.uint64) + np.uint64(123_456_789_000)


def within_4_sigma(successes: int, trials: int, p: float) -> bool:
    return abs(successes - trials * p) <= 4.0 * np.sqrt(trials * p * (1.0 - p))


def test_deterministic_and_batch_independent():
    words = slot_words(b"alice-bob", SLOTS)
    assert words.dtype == np.uint64
    np.testing.assert_array_equal(words, slot_words(b"alice-bob", SLOTS))
    picked = SLOTS[[5, 77, 999_999]]
    np.testing.assert_array_equal(slot_words(b"alice-bob", picked), words[[5, 77, 999_999]])


def test_different_keys_differ():
    a = slot_words(b"key-1", SLOTS[:10_000])
    b = slot_words(b"key-2", SLOTS[:10_000])
    assert np.count_nonzero(a == b) == 0
    bit_a, _, _ = sender_choices(b"key-1", SLOTS, [1.0])
    bit_b, _, _ = sender_choices(b"key-2", SLOTS, [1.0])
    assert within_4_sigma(int(np.count_nonzero(bit_a == bit_b)), N, 0.5)


def test_bits_and_bases_unbiased_and_uncorrelated():
    bit, basis, _ = sender_choices(b"k", SLOTS, [1.0])
    assert within_4_sigma(int(bit.sum()), N, 0.5)
    assert within_4_sigma(int(basis.sum()), N, 0.5)
    # 2x2 contingency chi-square, 1 degree of freedom: chi2 = z^2, so 4 sigma <=> chi2 < 16
    table = np.array([[np.count_nonzero((bit == i) & (basis == j)) for j in (0, 1)] for i in (0, 1)])
    expected = np.outer(table.sum(1), table.sum(0)) / N
    chi2 = float(((table - expected) ** 2 / expected).sum())
    assert chi2 < 16.0
    # consecutive slots are independent too (counter-based, no sequential state)
    assert within_4_sigma(int(np.count_nonzero(bit[1:] == bit[:-1])), N - 1, 0.5)


def test_intensity_frequencies_and_independence_from_bit():
    probabilities = [0.7, 0.2, 0.1]
    bit, _, index = sender_choices(b"decoy", SLOTS, probabilities)
    assert set(np.unique(index)) == {0, 1, 2}
    for i, p in enumerate(probabilities):
        chosen = index == i
        n_i = int(chosen.sum())
        assert within_4_sigma(n_i, N, p)
        assert within_4_sigma(int(bit[chosen].sum()), n_i, 0.5)


def test_zero_probability_intensity_never_chosen():
    _, _, index = sender_choices(b"k", SLOTS[:100_000], [0.5, 0.0, 0.5])
    assert not np.any(index == 1)


@pytest.mark.parametrize("bad", [[], [0.5, 0.4], [1.2, -0.2], [[0.5, 0.5]]])
def test_bad_probabilities_rejected(bad):
    with pytest.raises(ValueError):
        intensity_thresholds(bad)
