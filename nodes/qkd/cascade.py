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
MAX_PASSES = 255
# rows of CascadeReceiver._act: pass, cache row base, heap node, range start/end, pass * (n+1),
# flat top-level block index
_P, _ROW, _NODE, _START, _END, _PB, _BUSY = range(7)
_ROWS = 7


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


def _prefix_parity(bits: np.ndarray) -> np.ndarray:
    """pre[i] = XOR of bits[:i], length len(bits) + 1."""
    out = np.zeros(bits.shape[0] + 1, dtype=np.uint8)
    np.bitwise_xor.accumulate(bits, out=out[1:])
    return out


def _as_u32(data: bytes) -> np.ndarray:
    if len(data) % 4:
        raise CascadeProtocolError("range array length is not a multiple of 4 bytes")
    return np.frombuffer(data, dtype="<u4")


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
        starts = _as_u32(query.starts)
        ends = _as_u32(query.ends)
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
            parts.append(_prefix_parity(self.key if perm is None else self.key[perm]))
        self._prefix = np.concatenate(parts)


class CascadeReceiver:
    """Bob's side: drives the passes, corrects his key in place, counts disclosed parities.

    Use: ``msg = rx.start()``; while ``msg`` is a ``ParityQuery``, send it, and feed the
    answer to ``msg = rx.receive_reply(reply)``; the last ``msg`` is ``CascadeDone`` for Alice.
    ``rx.key`` is the corrected key, ``rx.leaked_bits`` the disclosed parities.
    """

    def __init__(
        self,
        key: np.ndarray,
        qber_estimate: float,
        schedule: str = "original",
        seed: int = 0,
        block_id: int = 0,
        permutations: PermutationCache | None = None,
    ) -> None:
        self.key = np.array(key, dtype=np.uint8)  # corrected in place
        self._key0 = self.key.copy()
        n = self.n = self.key.shape[0]
        if n == 0:
            raise ValueError("cannot reconcile an empty key")
        self.block_id = block_id
        self.seed = seed
        self.schedule = schedule
        self.sizes = block_sizes(schedule, qber_estimate, n)
        if len(self.sizes) > MAX_PASSES:
            raise ValueError("too many passes")
        if permutations is None or permutations.seed != seed or permutations.n != n:
            permutations = PermutationCache(seed, n)
        self._perms = permutations
        self.leaked_bits = 0
        self.rounds = 0
        self.errors_corrected = 0
        self.done = False

        npass = len(self.sizes)
        self._nblocks = [-(-n // k) for k in self.sizes]
        self._heap = [1 << (max(1, (k - 1).bit_length()) + 1) for k in self.sizes]
        cache_len = [nb * h for nb, h in zip(self._nblocks, self._heap)]
        self._cache_base = np.concatenate([[0], np.cumsum(cache_len)]).astype(np.int64)
        self._block_base = np.concatenate([[0], np.cumsum(self._nblocks)]).astype(np.int64)
        self._cache = np.full(int(self._cache_base[-1]), -1, dtype=np.int8)  # Alice parities
        self._errpar = np.zeros(int(self._block_base[-1]), dtype=np.uint8)  # top-level
        self._busy = np.zeros(int(self._block_base[-1]), dtype=bool)
        self._bpre = np.zeros(npass * (n + 1), dtype=np.uint8)  # Bob's initial prefixes
        self._flipcoord = np.zeros(0, dtype=np.int64)  # sorted p*(n+1)+pos of flipped bits
        self._flipped = np.zeros(0, dtype=np.int64)  # key indices flipped so far
        self._sizes_arr = np.array(self.sizes, dtype=np.int64)
        self._heap_arr = np.array(self._heap, dtype=np.int64)
        self._pass = -1
        self._total_parity: int | None = None
        # Active bisections, one column each; rows indexed by the _P.._BUSY constants.
        self._act = np.zeros((_ROWS, 0), dtype=np.int64)
        self._pending: tuple[str, np.ndarray] | None = None  # what the last query asked

    # ----------------------------------------------------------------- public API
    def start(self) -> ParityQuery | CascadeDone:
        if self.rounds or self._pass >= 0:
            raise RuntimeError("start() called twice")
        return self._run()

    def receive_reply(self, reply: ParityReply) -> ParityQuery | CascadeDone:
        if self._pending is None:
            raise CascadeProtocolError("reply without an outstanding query")
        if reply.block_id != self.block_id or reply.round != self.rounds - 1:
            raise CascadeProtocolError(
                f"reply for block {reply.block_id} round {reply.round}, expected "
                f"{self.block_id} round {self.rounds - 1}"
            )
        kind, idx = self._pending
        if reply.count != idx.shape[0] or len(reply.parities) != -(-reply.count // 8):
            raise CascadeProtocolError(f"reply holds {reply.count} parities, asked {idx.shape[0]}")
        bits = np.unpackbits(np.frombuffer(reply.parities, dtype=np.uint8), count=reply.count)
        self._pending = None
        self._cache[idx] = bits.astype(np.int8)
        if kind == "top":
            self._finish_top()
        return self._run()

    def efficiency(self, qber: float) -> float:
        return cascade_efficiency(self.leaked_bits, self.n, qber)

    # ----------------------------------------------------------------- internals
    def _cache_index(self, p, blk, node):
        return self._cache_base[p] + blk * self._heap_arr[p] + node

    def _bob_parity(self, pbase, start, end):
        """Bob's current parity of ranges [start, end); ``pbase`` = pass * (n + 1)."""
        pre = self._bpre[pbase + end] ^ self._bpre[pbase + start]
        g = self._flipcoord
        if g.shape[0]:
            cnt = np.searchsorted(g, pbase + end) - np.searchsorted(g, pbase + start)
            pre ^= (cnt & 1).astype(np.uint8)
        return pre

    def _query(self, kind: str, p, start, end, idx) -> ParityQuery:
        self._pending = (kind, idx)
        self.leaked_bits += int(idx.shape[0])
        q = ParityQuery(
            block_id=self.block_id,
            round=self.rounds,
            seed=self.seed,
            passes=p.astype(np.uint8).tobytes(),
            starts=start.astype("<u4").tobytes(),
            ends=end.astype("<u4").tobytes(),
        )
        self.rounds += 1
        return q

    def _begin_pass(self, p: int) -> ParityQuery | None:
        """Set up pass ``p``. Pass 0 returns the query for the top-level parities of *every*
        pass (Alice's parities of fixed ranges never change, so asking them all in round 0
        discloses nothing extra and saves a round per pass); later passes find them cached.
        """
        n = self.n
        self._pass = p
        perm = self._perms.forward(p)
        base = p * (n + 1)
        self._bpre[base : base + n + 1] = _prefix_parity(
            self._key0 if perm is None else self._key0[perm]
        )
        if self._flipped.shape[0]:
            self._add_flip_coords(p, self._flipped)
        if p > 0:
            self._finish_top()
            return None
        ps, blks = [], []
        for q, nb in enumerate(self._nblocks):
            count = nb if q == 0 else nb - 1  # last block: inferred from the total parity
            ps.append(np.full(count, q, dtype=np.int64))
            blks.append(np.arange(count, dtype=np.int64))
        pv, blk = np.concatenate(ps), np.concatenate(blks)
        k = self._sizes_arr[pv]
        idx = self._cache_index(pv, blk, 1)
        return self._query("top", pv, blk * k, np.minimum((blk + 1) * k, n), idx)

    def _finish_top(self) -> None:
        p, n = self._pass, self.n
        k, nb = self.sizes[p], self._nblocks[p]
        blk = np.arange(nb, dtype=np.int64)
        idx = self._cache_index(p, blk, 1)
        if p == 0:
            self._total_parity = int(np.bitwise_xor.reduce(self._cache[idx]))
        else:
            rest = int(np.bitwise_xor.reduce(self._cache[idx[:-1]])) if nb > 1 else 0
            self._cache[idx[-1]] = self._total_parity ^ rest
        bob = self._bob_parity(p * (n + 1), blk * k, np.minimum((blk + 1) * k, n))
        eb = self._block_base[p]
        self._errpar[eb : eb + nb] = self._cache[idx].astype(np.uint8) ^ bob
        self._start_odd_blocks()

    def _add_flip_coords(self, p: int, js: np.ndarray) -> None:
        inv = self._perms.inverse(p)
        pos = js if inv is None else inv[js].astype(np.int64)
        coords = np.sort(pos + p * (self.n + 1))
        g = self._flipcoord
        self._flipcoord = np.insert(g, np.searchsorted(g, coords), coords)

    def _start_odd_blocks(self) -> None:
        """Start a bisection at every odd top-level block (passes so far) not being bisected."""
        top = int(self._block_base[self._pass + 1])
        odd = np.flatnonzero((self._errpar[:top] == 1) & ~self._busy[:top])
        if odd.shape[0] == 0:
            return
        p = np.searchsorted(self._block_base, odd, side="right") - 1
        blk = odd - self._block_base[p]
        k = self._sizes_arr[p]
        self._busy[odd] = True
        new = np.empty((_ROWS, odd.shape[0]), dtype=np.int64)
        new[_P] = p
        new[_ROW] = self._cache_base[p] + blk * self._heap_arr[p]
        new[_NODE] = 1
        new[_START] = blk * k
        new[_END] = np.minimum((blk + 1) * k, self.n)
        new[_PB] = p * (self.n + 1)
        new[_BUSY] = odd
        self._act = np.concatenate([self._act, new], axis=1)

    def _run(self) -> ParityQuery | CascadeDone:
        """Advance locally until Alice must be asked something, or the block is done."""
        while True:
            if self._pass < 0:
                q = self._begin_pass(0)
                if q is not None:
                    return q
                continue
            found_p, found_pos = self._descend()
            if found_p.shape[0]:
                self._apply_flips(found_p, found_pos)
                continue
            act = self._act
            if act.shape[1]:
                start, end = act[_START], act[_END]
                mid = start + (end - start + 1) // 2
                return self._query("bisect", act[_P], start, mid, act[_ROW] + 2 * act[_NODE])
            if self._pass + 1 < len(self.sizes):
                q = self._begin_pass(self._pass + 1)
                if q is not None:
                    return q
                continue
            self.done = True
            return CascadeDone(
                block_id=self.block_id, rounds=self.rounds, leaked_bits=self.leaked_bits
            )

    def _descend(self) -> tuple[np.ndarray, np.ndarray]:
        """Walk active bisections down through known parities; return the errors located."""
        fp: list[np.ndarray] = []
        fpos: list[np.ndarray] = []
        act = self._act
        cache = self._cache
        while act.shape[1]:
            leaf = (act[_END] - act[_START]) == 1
            if leaf.any():
                fp.append(act[_P, leaf])
                fpos.append(act[_START, leaf])
                self._busy[act[_BUSY, leaf]] = False
                act = act[:, ~leaf]
                if not act.shape[1]:
                    break
            left_idx = act[_ROW] + 2 * act[_NODE]
            alice_left = cache[left_idx]
            known = alice_left >= 0
            n_known = int(np.count_nonzero(known))
            if n_known == 0:
                break
            partial = n_known < act.shape[1]
            sub = act[:, known] if partial else act
            if partial:
                left_idx, alice_left = left_idx[known], alice_left[known]
            start, end = sub[_START], sub[_END]
            mid = start + (end - start + 1) // 2
            a_left = alice_left.view(np.uint8)
            go_right = (a_left ^ self._bob_parity(sub[_PB], start, mid)) == 0
            a_node = cache[sub[_ROW] + sub[_NODE]].view(np.uint8)
            cache[left_idx[go_right] + 1] = (a_node[go_right] ^ a_left[go_right]).view(np.int8)
            sub[_NODE] = 2 * sub[_NODE] + go_right
            sub[_START] = np.where(go_right, mid, start)
            sub[_END] = np.where(go_right, end, mid)
            if partial:
                act[:, known] = sub
        self._act = act
        if not fp:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        return np.concatenate(fp), np.concatenate(fpos)

    def _apply_flips(self, found_p: np.ndarray, found_pos: np.ndarray) -> None:
        js = np.empty_like(found_pos)
        for p in np.unique(found_p):
            sel = found_p == p
            perm = self._perms.forward(int(p))
            js[sel] = found_pos[sel] if perm is None else perm[found_pos[sel]]
        js = np.unique(js)
        self.key[js] ^= 1
        self.errors_corrected += int(js.shape[0])
        self._flipped = np.concatenate([self._flipped, js])
        npass = self._pass + 1
        pos = [js]  # pass 0 is not shuffled
        pos += [self._perms.inverse(p)[js].astype(np.int64) for p in range(1, npass)]
        pos_all = np.concatenate(pos)
        pass_all = np.repeat(np.arange(npass, dtype=np.int64), js.shape[0])
        coords = np.sort(pos_all + pass_all * (self.n + 1))
        g = self._flipcoord
        self._flipcoord = np.insert(g, np.searchsorted(g, coords), coords)
        top = int(self._block_base[npass])
        blk = pos_all // self._sizes_arr[pass_all] + self._block_base[pass_all]
        self._errpar[:top] ^= (np.bincount(blk, minlength=top) & 1).astype(np.uint8)
        # Bisections whose current range lost its odd error parity are dropped (restarted
        # from the top by _start_odd_blocks if their block is still odd; known parities reused).
        act = self._act
        if act.shape[1]:
            alice = self._cache[act[_ROW] + act[_NODE]].view(np.uint8)
            still_odd = (alice ^ self._bob_parity(act[_PB], act[_START], act[_END])) == 1
            if not still_odd.all():
                self._busy[act[_BUSY, ~still_odd]] = False
                self._act = act[:, still_odd]
        self._start_odd_blocks()
