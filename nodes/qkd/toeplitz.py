"""Toeplitz hashing over GF(2) for privacy amplification, exact, computed with a float64 FFT.

A Toeplitz matrix with a uniformly random seed is a 2-universal hash family (Krawczyk, CRYPTO
'94), so by the leftover-hash lemma it extracts the secret part of a partially known key.

Convention: for a key ``x`` of ``n`` bits, an output of ``m`` bits and a seed ``s`` of
``n + m - 1`` bits, the matrix is ``T[i, j] = s[i - j + n - 1]`` (first column ``s[n-1:]``,
first row ``s[n-1::-1]``) and ``y = T x mod 2``, i.e. ``y[i] = (s * x)[i + n - 1] mod 2``
with ``*`` the linear convolution. Bits are numpy ``uint8`` arrays of 0/1 (unpacked).

Exactness: the convolution is computed as a circular convolution of length ``N >= n + m - 1``
(the wrap-around only touches the discarded first ``n - 1`` outputs). Each exact coefficient
is an integer in ``[0, min(n, n + m - 1)]``; the float64 FFT error is bounded by roughly
``eps * log2(N) * ||x||_2 * ||s||_2 <= 2.2e-16 * 24 * 1e7 ~ 5e-8`` even at ``n = 10^7``, far
below the 0.5 needed for rounding to be exact. The rounding residual is still checked on
every call (``ToeplitzPrecisionError`` if it ever exceeds 0.25), so a wrong answer is never
returned silently.
"""

from __future__ import annotations

import numpy as np

_MAX_RESIDUAL = 0.25


class ToeplitzPrecisionError(ArithmeticError):
    """The FFT result was too far from an integer for exact rounding (never seen in practice)."""


def _fast_size(n: int) -> int:
    """Smallest 5-smooth integer >= n (sizes pocketfft transforms fastest)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def seed_length(n: int, out_len: int) -> int:
    """Number of seed bits a Toeplitz hash of an ``n``-bit key to ``out_len`` bits needs."""
    return n + out_len - 1


class ToeplitzHasher:
    """A Toeplitz hash for fixed (key length, output length, seed), seed spectrum precomputed.

    Use one object per seed: the seed FFT is done once, so hashing costs one forward and one
    inverse real FFT. ``toeplitz_hash`` is the one-shot form.
    """

    def __init__(self, seed_bits: np.ndarray, n: int, out_len: int) -> None:
        seed_bits = np.asarray(seed_bits)
        if n < 1 or out_len < 0:
            raise ValueError(f"need n >= 1 and out_len >= 0, got n={n}, out_len={out_len}")
        if seed_bits.shape != (seed_length(n, out_len),):
            raise ValueError(
                f"seed must have n + out_len - 1 = {seed_length(n, out_len)} bits, "
                f"got shape {seed_bits.shape}"
            )
        self.n = n
        self.out_len = out_len
        self._size = _fast_size(max(1, n + out_len - 1))
        self._seed_spectrum = np.fft.rfft(seed_bits.astype(np.float64), self._size)

    def hash(self, key_bits: np.ndarray) -> np.ndarray:
        """Return ``T key mod 2`` as ``out_len`` uint8 bits."""
        key_bits = np.asarray(key_bits)
        if key_bits.shape != (self.n,):
            raise ValueError(f"key must have {self.n} bits, got shape {key_bits.shape}")
        if self.out_len == 0:
            return np.zeros(0, dtype=np.uint8)
        spectrum = np.fft.rfft(key_bits.astype(np.float64), self._size)
        spectrum *= self._seed_spectrum
        conv = np.fft.irfft(spectrum, self._size)[self.n - 1 : self.n - 1 + self.out_len]
        rounded = np.rint(conv)
        residual = float(np.max(np.abs(conv - rounded)))
        if residual > _MAX_RESIDUAL:
            raise ToeplitzPrecisionError(f"FFT rounding residual {residual:.3g} too large")
        return (rounded.astype(np.int64) & 1).astype(np.uint8)


def toeplitz_hash(key_bits: np.ndarray, seed_bits: np.ndarray, out_len: int) -> np.ndarray:
    """Hash ``key_bits`` (n bits) to ``out_len`` bits with the Toeplitz matrix of ``seed_bits``.

    ``seed_bits`` must hold ``n + out_len - 1`` bits; see the module docstring for the layout.
    """
    key_bits = np.asarray(key_bits)
    return ToeplitzHasher(seed_bits, key_bits.shape[0], out_len).hash(key_bits)


def toeplitz_hash_naive(key_bits: np.ndarray, seed_bits: np.ndarray, out_len: int) -> np.ndarray:
    """Reference O(n m) GF(2) matrix product (for tests; builds the whole matrix)."""
    key_bits = np.asarray(key_bits, dtype=np.int64)
    n = key_bits.shape[0]
    i = np.arange(out_len)[:, None]
    j = np.arange(n)[None, :]
    matrix = np.asarray(seed_bits, dtype=np.int64)[i - j + n - 1]
    return ((matrix @ key_bits) & 1).astype(np.uint8)
