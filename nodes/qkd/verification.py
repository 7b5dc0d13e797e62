"""Error verification: both ends compare a universal hash of the reconciled block.

The hash is a polynomial hash over the prime field GF(p), p = 2^61 - 1 (Carter-Wegman
polynomial evaluation hash, see Bernstein, "The Poly1305-AES message-authentication code",
sec. 3, for the bound): the block is cut into d = ceil(n / 56) chunks of 56 bits, preceded by
its length, and evaluated at secret points r_1..r_k drawn uniformly from GF(p) by a fresh seed.
For two different blocks of n bits the tags collide with probability at most
``(d + 1) / p <= n / 2^61`` per point, so ``(n / 2^61)^k`` for a tag of ``t = 61 k`` bits, which
is below the brief's ``n / 2^t``. The ``t`` tag bits are disclosed and must be subtracted from the
privacy-amplification output (``leaked_bits``).

Messages: the side that proposes sends ``VerifyTag`` (seed + its tag); the other side compares
with its own tag and answers ``VerifyResult``. A mismatch means the block is discarded.
"""

from __future__ import annotations

import hashlib

import msgspec
import numpy as np

from nodes.errors import BlockRejected

PRIME = (1 << 61) - 1
CHUNK_BITS = 56
POINT_BITS = 61
SEED_BYTES = 32


class VerifyTag(msgspec.Struct, tag="verify_tag", forbid_unknown_fields=True):
    """Proposer -> peer: the seed that fixes the hash points and the proposer's tag."""

    block_id: int
    seed: bytes
    tag: bytes


class VerifyResult(msgspec.Struct, tag="verify_result", forbid_unknown_fields=True):
    """Peer -> proposer: whether the tags matched (both ends then keep or discard the block)."""

    block_id: int
    ok: bool


class VerificationError(BlockRejected):
    """A ``VerifyTag``/``VerifyResult`` that does not fit this block: ends that block."""


def points_from_seed(seed: bytes, count: int) -> list[int]:
    """Expand a random seed into ``count`` evaluation points in GF(2^61 - 1) with SHAKE-256.

    Points are uniform up to the 2^-64 bias of reducing 128-bit integers modulo p; the seed
    itself must be fresh and random (os.urandom or key pool) and chosen after the keys.
    """
    stream = hashlib.shake_256(b"qnet-verify\x00" + seed).digest(16 * count)
    return [int.from_bytes(stream[16 * i : 16 * i + 16], "big") % PRIME for i in range(count)]


def polynomial_hash(key_bits: np.ndarray, point: int) -> int:
    """Horner evaluation of (n, chunk_1, ..., chunk_d) at ``point`` modulo 2^61 - 1."""
    key_bits = np.asarray(key_bits, dtype=np.uint8)
    n = key_bits.shape[0]
    pad = (-n) % CHUNK_BITS
    packed = np.packbits(np.concatenate([key_bits, np.zeros(pad, np.uint8)])).tobytes()
    acc = n % PRIME
    step = CHUNK_BITS // 8
    for offset in range(0, len(packed), step):
        acc = (acc * point + int.from_bytes(packed[offset : offset + step], "big")) % PRIME
    return acc


def verification_tag(key_bits: np.ndarray, seed: bytes, tag_bits: int = 122) -> bytes:
    """Tag of ``ceil(tag_bits / 61)`` polynomial hashes (8 bytes each) of ``key_bits``."""
    count = max(1, -(-tag_bits // POINT_BITS))
    points = points_from_seed(seed, count)
    return b"".join(polynomial_hash(key_bits, r).to_bytes(8, "big") for r in points)


def tag_leak_bits(tag_bits: int = 122) -> int:
    """Bits of information about the key a tag discloses (61 per evaluation point)."""
    return POINT_BITS * max(1, -(-tag_bits // POINT_BITS))


def collision_bound(n: int, tag_bits: int = 122) -> float:
    """Upper bound on the probability that two different n-bit blocks get the same tag."""
    count = max(1, -(-tag_bits // POINT_BITS))
    d = -(-n // CHUNK_BITS) + 1
    return (d / PRIME) ** count


class BlockVerifier:
    """Sans-I/O verification for one end of a link; counts blocks kept and discarded.

    ``propose`` (one end) makes a ``VerifyTag``; ``check`` (other end) answers with a
    ``VerifyResult`` and records the outcome; ``conclude`` records it at the proposer.
    """

    def __init__(self, tag_bits: int = 122) -> None:
        self.tag_bits = tag_bits
        self.blocks_ok = 0
        self.blocks_failed = 0
        self._pending: dict[int, bytes] = {}

    @property
    def leaked_bits(self) -> int:
        return tag_leak_bits(self.tag_bits)

    def propose(self, block_id: int, key_bits: np.ndarray, seed: bytes) -> VerifyTag:
        if len(seed) < 16:
            raise ValueError("verification seed must have at least 16 random bytes")
        tag = verification_tag(key_bits, seed, self.tag_bits)
        self._pending[block_id] = tag
        return VerifyTag(block_id=block_id, seed=seed, tag=tag)

    def check(self, message: VerifyTag, key_bits: np.ndarray) -> VerifyResult:
        if len(message.seed) < 16:
            raise VerificationError(f"block {message.block_id}: seed shorter than 16 bytes")
        ok = verification_tag(key_bits, message.seed, self.tag_bits) == message.tag
        self._record(ok)
        return VerifyResult(block_id=message.block_id, ok=ok)

    def conclude(self, message: VerifyResult) -> bool:
        if message.block_id not in self._pending:
            raise VerificationError(f"result for block {message.block_id} that was not proposed")
        del self._pending[message.block_id]
        self._record(message.ok)
        return message.ok

    def _record(self, ok: bool) -> None:
        if ok:
            self.blocks_ok += 1
        else:
            self.blocks_failed += 1
