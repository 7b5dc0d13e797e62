"""The key manager as a node service: the SQLite store run off the event loop, concurrent
calls committed together (group commit), and a wake-up for whoever waits for keys to come.

QKD apps call ``deposit`` with each block's final key bits; the KME allocates, applies and
claims through ``call``. For a peer this node allocates for (``limited_peers``) the pool holds
at most ``max_key_count`` available keys; keys dropped beyond it go out on ``dropped`` so the
KME can tell the peer to discard its copies.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import trio

from nodes.services.keys.cutting import cut_block
from nodes.services.keys.store import Deposit, KeyDB

T = TypeVar("T")


class _Op:
    """One store call waiting for (or done in) a batch."""

    __slots__ = ("fn", "result", "error", "finished")

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.result = None
        self.error: Exception | None = None
        self.finished = False


class KeyManager:
    """One node's key store with its cutting rule (``key_size`` bits per key)."""

    def __init__(self, path: str | Path, key_size: int, max_key_count: int,
                 limited_peers: set[str] | frozenset[str] = frozenset()) -> None:
        self.db = KeyDB(path)
        self.key_size = key_size
        self.max_key_count = max_key_count
        self.limited_peers = set(limited_peers)
        self.counters: Counter[str] = Counter()
        self._limiter = trio.CapacityLimiter(1)
        self._queue: list[_Op] = []
        self._running = False
        self._batch_done = trio.Event()
        self._deposited = trio.Event()
        self._dropped_send, self.dropped = trio.open_memory_channel[tuple[str, list[str]]](
            math.inf)

    async def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run one store method in a worker thread and return once it is committed.

        Calls that arrive while a batch runs wait and then go together in the next one: one
        transaction, one fsync (group commit), each call in its own savepoint."""
        op = _Op(partial(fn, *args, **kwargs))
        self._queue.append(op)
        while not op.finished:
            if self._running:
                await self._batch_done.wait()
                continue
            batch, self._queue = self._queue, []
            self._running = True
            try:
                await trio.to_thread.run_sync(self._run_batch, batch, limiter=self._limiter)
            except Exception as exc:  # the commit failed: nothing of the batch holds
                for item in batch:
                    item.error, item.finished = exc, True
            finally:
                self._running = False
                self._batch_done.set()
                self._batch_done = trio.Event()
        if op.error is not None:
            raise op.error
        return op.result

    def _run_batch(self, batch: list[_Op]) -> None:
        self.counters["batches"] += 1
        with self.db.batch():
            for op in batch:
                try:
                    op.result = op.fn()
                except Exception as exc:  # this call's savepoint was rolled back
                    op.error = exc
        for op in batch:
            op.finished = True

    async def deposit(self, peer: str, link: str, block: int, bits: np.ndarray) -> Deposit:
        """Cut a block's final key and store it durably (returns once committed)."""
        cut = cut_block(link, block, bits, self.key_size)
        limit = self.max_key_count if peer in self.limited_peers else None
        result = await self.call(self.db.deposit, peer, link, block, cut.keys, limit)
        self.counters["deposited_blocks"] += 1
        self.counters["stored_keys"] += result.stored
        self.counters["dropped_keys"] += len(result.dropped)
        self.counters["duplicate_keys"] += result.duplicates
        self.counters["leftover_bits"] += cut.leftover_bits
        if result.dropped:
            self._dropped_send.send_nowait((peer, result.dropped))
        self._deposited.set()
        self._deposited = trio.Event()
        return result

    def deposit_event(self) -> trio.Event:
        """An event set by the next deposit (take it before looking, then wait on it)."""
        return self._deposited

    def close(self) -> None:
        self.db.close()
