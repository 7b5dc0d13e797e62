"""What both ends of Cascade share: the wire messages, the block-size schedules, the shuffles
and prefix parities; the protocol itself is ``nodes.qkd.cascade`` (its docstring explains it).
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec
import numpy as np

from emulator.physics.entropy import binary_entropy
from nodes.errors import BlockRejected

Schedule = Literal["original", "yanetal", "option7", "option8"]
SCHEDULES: tuple[str, ...] = ("original", "yanetal", "option7", "option8")
MIN_QBER = 1e-5


class ParityQuery(msgspec.Struct, tag="cascade_query", forbid_unknown_fields=True):
    """Bob -> Alice: parities wanted for ranges ``[start, end)`` of pass ``pass`` order.

    ``passes`` holds one uint8 per range, ``starts``/``ends`` one little-endian uint32 each.
    ``seed`` fixes the shuffles; ``round`` counts queries from 0 within a block.
    """

    block_id: int
    round: int
    seed: int
    passes: bytes
    starts: bytes
    ends: bytes


class ParityReply(msgspec.Struct, tag="cascade_reply", forbid_unknown_fields=True):
    """Alice -> Bob: the ``count`` parities asked, packed MSB-first (numpy.packbits)."""

    block_id: int
    round: int
    count: int
    parities: bytes


class CascadeDone(msgspec.Struct, tag="cascade_done", forbid_unknown_fields=True):
    """Bob -> Alice: reconciliation of the block finished; both ends must agree on the leak."""

    block_id: int
    rounds: int
    leaked_bits: int


class CascadeProtocolError(BlockRejected):
    """A Cascade message that does not fit the block: the peer's fault, ends that block."""


def block_sizes(schedule: str, qber: float, n: int) -> list[int]:
    """Block size of every pass for ``schedule`` at estimated ``qber`` and key length ``n``."""
    q = max(float(qber), MIN_QBER)
    half = max(1, n // 2)
    if schedule == "original":
        k1 = math.ceil(0.73 / q)
        sizes = [k1 * 2**i for i in range(4)]
    elif schedule == "yanetal":
        k1 = math.ceil(0.80 / q)
        sizes = [k1, 5 * k1] + [half] * 8
    elif schedule == "option7":
        k1 = 2 ** math.ceil(math.log2(1.0 / q))
        sizes = [k1, 4 * k1] + [half] * 12
    elif schedule == "option8":
        a = math.log2(1.0 / q) - 0.5
        sizes = [2 ** math.ceil(a), 2 ** math.ceil((a + 12.0) / 2.0), 4096] + [half] * 11
    else:
        raise ValueError(f"unknown Cascade schedule {schedule!r}; choose from {SCHEDULES}")
    return [max(1, min(int(k), n)) for k in sizes]


def cascade_efficiency(leaked_bits: int, n: int, qber: float) -> float:
    """Reconciliation efficiency f = leaked / (n H2(qber)) (1.0 is the Shannon limit)."""
    h = float(binary_entropy(qber))
    return math.inf if h == 0.0 else leaked_bits / (n * h)


class PermutationCache:
    """The shuffles of one (seed, n): pass 0 is the identity, pass p the PCG64([seed, p]) one.

    Both ends build the same permutations from the seed. Reusing one cache across blocks of
    the same length and seed saves the O(n) generation per pass.
    """

    def __init__(self, seed: int, n: int) -> None:
        self.seed = seed
        self.n = n
        self._forward: dict[int, np.ndarray] = {}
        self._inverse: dict[int, np.ndarray] = {}

    def forward(self, p: int) -> np.ndarray | None:
        """perm[pos] = key index at position ``pos`` of pass ``p`` (None: identity)."""
        if p == 0:
            return None
        perm = self._forward.get(p)
        if perm is None:
            rng = np.random.default_rng([self.seed, p])
            perm = rng.permutation(self.n).astype(np.int32)
            self._forward[p] = perm
        return perm

    def inverse(self, p: int) -> np.ndarray | None:
        """inv[index] = position of key bit ``index`` in pass ``p`` (None: identity)."""
        if p == 0:
            return None
        inv = self._inverse.get(p)
        if inv is None:
            inv = np.empty(self.n, dtype=np.int32)
            inv[self.forward(p)] = np.arange(self.n, dtype=np.int32)
            self._inverse[p] = inv
        return inv


def prefix_parity(bits: np.ndarray) -> np.ndarray:
    """pre[i] = XOR of bits[:i], length len(bits) + 1."""
    out = np.zeros(bits.shape[0] + 1, dtype=np.uint8)
    np.bitwise_xor.accumulate(bits, out=out[1:])
    return out


def as_u32(data: bytes) -> np.ndarray:
    if len(data) % 4:
        raise CascadeProtocolError("range array length is not a multiple of 4 bytes")
    return np.frombuffer(data, dtype="<u4")
