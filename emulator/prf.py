"""Keyed counter-based PRF of the slot index: the sender's per-slot choices, in O(1) per slot.

The sender and the quantum daemon both hold the link's PRF key, so either can compute the
sender's bit, basis and intensity for any slot without the daemon ever shipping per-pulse data
(DESIGN §4). The mix is a keyed SplitMix64 finaliser applied twice (Steele, Lea & Flood,
"Fast splittable pseudorandom number generators", OOPSLA 2014), vectorised in numpy uint64.
It is a statistical PRF for emulation, not a cryptographic one: a node that learns the key
learns the sender's choices, which is why the key is only ever sent to the daemon.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_ONE = np.uint64(1)

BIT_SHIFT = 0  # bit field positions inside the 64-bit word; intensity uses the top 32 bits
BASIS_SHIFT = 1


def key_words(key: bytes) -> tuple[np.uint64, np.uint64]:
    """Two 64-bit subkeys derived from an arbitrary-length key with BLAKE2b (keyed domain)."""
    digest = hashlib.blake2b(key, digest_size=16, person=b"qnet-slot-prf").digest()
    return (
        np.uint64(int.from_bytes(digest[:8], "little")),
        np.uint64(int.from_bytes(digest[8:], "little")),
    )


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (bijective avalanche on uint64), in place on a fresh array."""
    x ^= x >> _S30
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    return x


def slot_words(key: bytes, slots: np.ndarray) -> np.ndarray:
    """64 pseudo-random bits per slot: mix(mix(slot * golden + k0) ^ k1), uint64 in, uint64 out.

    Deterministic in (key, slot), independent of how the slots are batched.
    """
    k0, k1 = key_words(key)
    x = np.asarray(slots, dtype=np.uint64) * _GOLDEN
    x += k0
    _mix(x)
    x ^= k1
    return _mix(x)


def intensity_thresholds(probabilities: Sequence[float]) -> np.ndarray:
    """Cumulative probabilities scaled to 2^32 (uint64), the last forced to 2^32 exactly."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
        raise ValueError(f"intensity probabilities must be >= 0 and sum to 1, got {probabilities}")
    if p.size > 255:
        raise ValueError("at most 255 intensities")
    cumulative = np.floor(np.cumsum(p) * 2.0**32).astype(np.uint64)
    cumulative[-1] = np.uint64(2**32)
    return cumulative


def choices_from_words(
    words: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split PRF words into (bit, basis, intensity index), each uint8.

    bit = bit 0, basis = bit 1, intensity = number of cumulative thresholds <= top 32 bits,
    so P(index = i) = p_i up to 2^-32 rounding.
    """
    bit = ((words >> np.uint64(BIT_SHIFT)) & _ONE).astype(np.uint8)
    basis = ((words >> np.uint64(BASIS_SHIFT)) & _ONE).astype(np.uint8)
    if thresholds.size == 1:
        index = np.zeros(words.shape, dtype=np.uint8)
    else:
        index = np.searchsorted(thresholds, words >> _S32, side="right").astype(np.uint8)
    return bit, basis, index


def sender_choices(
    key: bytes, slots: np.ndarray, intensity_probabilities: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sender's (bit, basis, intensity index) for each slot; basis 0 = Z, 1 = X."""
    return choices_from_words(slot_words(key, slots), intensity_thresholds(intensity_probabilities))
