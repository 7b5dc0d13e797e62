"""Bob's side of Cascade: drives the passes and the batched, vectorised bisections, and
corrects his key in place (the protocol and its optimisations: ``nodes.qkd.cascade``).
"""

from __future__ import annotations

import numpy as np

from nodes.qkd.cascade_common import (
    CascadeDone,
    CascadeProtocolError,
    ParityQuery,
    ParityReply,
    PermutationCache,
    block_sizes,
    cascade_efficiency,
    prefix_parity,
)

MAX_PASSES = 255
# rows of CascadeReceiver._act: pass, cache row base, heap node, range start/end, pass * (n+1),
# flat top-level block index
_P, _ROW, _NODE, _START, _END, _PB, _BUSY = range(7)
_ROWS = 7


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
        self._bpre[base : base + n + 1] = prefix_parity(
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
