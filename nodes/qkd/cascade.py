"""Cascade error reconciliation as two sans-I/O cores: the sender answers, the receiver corrects.

Cascade (Brassard & Salvail, EUROCRYPT '93): in pass ``p`` the key, shuffled by a permutation
both ends derive from a shared seed, is cut into blocks of ``k_p`` bits; the sender (Alice)
discloses block parities, and the receiver (Bob) bisects every block whose parity differs
(BINARY) to find and flip one error. A flip toggles the parity of the blocks holding that bit
in every earlier pass, which are bisected again ("cascade"). Every parity Alice discloses is
counted in ``leaked_bits``; efficiency ``f = leaked / (n H2(QBER))``.

Implementation choices (see docs/qkd.md for measured efficiency):
* Batched and vectorised: each round is one ``ParityQuery`` holding every range Bob needs
  now (all top-level blocks of a pass, or the left halves of all blocks being bisected), and
  one ``ParityReply`` with the parities packed 8 per byte. Parities come from prefix-XOR
  arrays, so a range parity costs O(1) on both ends.
* Every parity Alice disclosed is remembered (and the right half's parity is inferred from
  parent and left half), so no range is asked twice; a block re-bisected in a later cascade
  walks down its known sub-blocks for free (sub-block reuse, "Cascade opt." in Martinez-Mateo
  et al., QIC 15, 453 (2015)). In passes after the first, the parity of the last block is
  inferred from the whole-key parity instead of being disclosed. The top-level parities of
  all passes are asked in round 0 (fixed ranges of a fixed key: no extra disclosure).
* Pass 1 is not shuffled (the key is already random); later passes use
  ``numpy.random.default_rng([seed, pass]).permutation(n)`` on both ends.

Schedules (block sizes, following the names in Martinez-Mateo et al. 2015 and B. Rijsman's
cascade-python): ``original`` 4 passes, k1 = ceil(0.73/Q), k_i = 2 k_{i-1};
``yanetal`` 10 passes, k1 = ceil(0.80/Q), k2 = 5 k1, k_i = n/2 (Yan et al. 2008);
``option7`` 14 passes, k1 = 2^ceil(log2(1/Q)), k2 = 4 k1, k_i = n/2;
``option8`` 14 passes, a = log2(1/Q) - 0.5, k1 = 2^ceil(a), k2 = 2^ceil((a+12)/2), k3 = 4096,
k_i = n/2. Block sizes are clipped to [1, n].

Modules: ``cascade_common`` (messages, schedules, shuffles), ``cascade_receiver`` (Bob); this
one is Alice's ``CascadeSender`` and the names both ends import.
"""

from __future__ import annotations

import numpy as np

from nodes.qkd.cascade_common import (
    MIN_QBER,
    SCHEDULES,
    CascadeDone,
    CascadeProtocolError,
    ParityQuery,
    ParityReply,
    PermutationCache,
    Schedule,
    as_u32,
    block_sizes,
    cascade_efficiency,
    prefix_parity,
)
from nodes.qkd.cascade_receiver import MAX_PASSES, CascadeReceiver

__all__ = [
    "MAX_PASSES",
    "MIN_QBER",
    "SCHEDULES",
    "CascadeDone",
    "CascadeProtocolError",
    "CascadeReceiver",
    "CascadeSender",
    "ParityQuery",
    "ParityReply",
    "PermutationCache",
    "Schedule",
    "block_sizes",
    "cascade_efficiency",
]


class CascadeSender:
    """Alice's side: answers ``ParityQuery`` from her key and counts the parities disclosed."""

    def __init__(
        self,
        key: np.ndarray,
        block_id: int = 0,
        permutations: PermutationCache | None = None,
        max_leaked_bits: int | None = None,
    ) -> None:
        self.key = np.ascontiguousarray(key, dtype=np.uint8)
        self.n = self.key.shape[0]
        # A peer asking for more parities than this gets an error instead of answers. None: no
        # limit; the node sets it to the leak above which the block could yield no key anyway.
        self.max_leaked_bits = max_leaked_bits
        self.block_id = block_id
        self.leaked_bits = 0
        self.rounds = 0
        self.done = False
        self._perms = permutations
        self._prefix = np.zeros(0, dtype=np.uint8)  # pass p's prefix parities at p*(n+1)

    def receive_query(self, query: ParityQuery) -> ParityReply:
        if self.done:
            raise CascadeProtocolError("query after CascadeDone")
        if query.block_id != self.block_id:
            raise CascadeProtocolError(f"query for block {query.block_id}, not {self.block_id}")
        if query.round != self.rounds:
            raise CascadeProtocolError(f"query round {query.round}, expected {self.rounds}")
        if self._perms is None or self._perms.seed != query.seed or self._perms.n != self.n:
            if self._prefix.shape[0] and self._perms is not None:
                raise CascadeProtocolError("shuffle seed changed within a block")
            self._perms = PermutationCache(query.seed, self.n)
        passes = np.frombuffer(query.passes, dtype=np.uint8)
        starts = as_u32(query.starts)
        ends = as_u32(query.ends)
        if not (passes.shape == starts.shape == ends.shape):
            raise CascadeProtocolError("passes, starts and ends differ in length")
        if np.any(starts >= ends) or np.any(ends > self.n):
            raise CascadeProtocolError(f"range outside [0, {self.n}) or empty")
        budget = self.max_leaked_bits
        if budget is not None and self.leaked_bits + passes.shape[0] > budget:
            raise CascadeProtocolError(
                f"query would disclose {self.leaked_bits + passes.shape[0]} parities, "
                f"over the budget of {budget}"
            )
        if passes.shape[0]:
            self._ensure_passes(int(passes.max()) + 1)
        base = passes.astype(np.int64) * (self.n + 1)
        parities = self._prefix[base + ends] ^ self._prefix[base + starts]
        self.rounds += 1
        self.leaked_bits += int(parities.shape[0])
        return ParityReply(
            block_id=self.block_id,
            round=query.round,
            count=int(parities.shape[0]),
            parities=np.packbits(parities).tobytes(),
        )

    def receive_done(self, done: CascadeDone) -> None:
        """Finish; raises if Bob's count of disclosed bits differs from Alice's."""
        if done.block_id != self.block_id:
            raise CascadeProtocolError(f"done for block {done.block_id}, not {self.block_id}")
        if done.leaked_bits != self.leaked_bits or done.rounds != self.rounds:
            raise CascadeProtocolError(
                f"peer counts {done.leaked_bits} bits in {done.rounds} rounds, "
                f"we disclosed {self.leaked_bits} in {self.rounds}"
            )
        self.done = True

    def _ensure_passes(self, count: int) -> None:
        """Extend the flat prefix-parity table (pass p at offset p * (n + 1)) to ``count``."""
        have = self._prefix.shape[0] // (self.n + 1)
        if count <= have:
            return
        parts = [self._prefix]
        for p in range(have, count):
            perm = self._perms.forward(p)
            parts.append(prefix_parity(self.key if perm is None else self.key[perm]))
        self._prefix = np.concatenate(parts)
