"""Decoy-state BB84 post-processing of sifted blocks, as two sans-I/O cores.

A block is a run of whole sifted batches (``BatchRecord``s, identical at both ends) holding at
least ``block_bits`` key bits. For each block, in order:

1. parameter estimation from the block's counts: vacuum + weak decoy bounds Y1_L, e1_U
   (``emulator.physics.decoy``); abort if the signal QBER exceeds ``qber_abort`` or Y1_L <= 0;
2. Cascade: the receiver corrects its key against the sender's parities;
3. verification: the sender proposes a universal-hash tag; a mismatch discards the block;
4. privacy amplification: output length from GLLP with the measured leakage,
   l = n Q1/Q_mu [1 - H2(e1)] - leak_EC - verification - 2 log2(1/eps_pa); the sender picks
   the Toeplitz seed. The first ``auth_bits`` output bits refill the authentication key pool
   (they pay for this block's authenticated messages); the rest is delivered to the key store.

The receiver drives (it knows first when a block is full); the sender follows. Both ends call
the same pure functions on the same records (``blocks.py``), so they agree on every number
without trusting each other's arithmetic. Only messages pass between the cores.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from nodes.errors import BlockRejected, MalformedMessage, UnexpectedMessage
from nodes.qkd import messages as m
from nodes.qkd.blocks import (
    Block,
    PostprocessingConfig,
    abort_reason,
    estimate_block,
    finish_block,
    hash_block,
    output_length,
    records_key,
)
from nodes.qkd.cascade import CascadeDone, CascadeReceiver, CascadeSender, ParityQuery, ParityReply
from nodes.qkd.sifting import BatchRecord
from nodes.qkd.toeplitz import seed_length
from nodes.qkd.verification import BlockVerifier, VerifyResult, VerifyTag


def _block_of(message) -> int | None:
    """The block a post-processing message is about (None for messages without one)."""
    for name in ("block", "block_id"):
        if (value := getattr(message, name, None)) is not None:
            return value
    return None


class _Common:
    """What both ends share: finished blocks, and blocks ended because of the peer.

    A peer's inconsistent data for the open block raises ``BlockRejected`` from
    ``on_message``; the shell then calls ``reject``, which closes that block as
    ``rejected`` and returns the ``BlockAbort`` telling the peer (and, at the receiver, the
    start of the next block). Late messages about a rejected block are dropped.
    """

    def __init__(self, config: PostprocessingConfig) -> None:
        self.config = config
        self.verifier = BlockVerifier(config.verification_tag_bits)
        self.finished: deque[Block] = deque()  # blocks done (ok, aborted or failed), unread
        self.blocks: list[Block] = []
        self._block: Block | None = None
        self._rejected: set[int] = set()

    def _close(self, block: Block, status: str) -> None:
        if status != "ok":
            block.status = status
            block.final_key = None
        self.blocks.append(block)
        self.finished.append(block)

    def _end(self, block: Block, status: str) -> None:
        self._block = self._cascade = None
        self._close(block, status)

    def _stale(self, message) -> bool:
        """A message about a block we rejected (sent before the peer read our abort)."""
        return _block_of(message) in self._rejected

    def reject(self, error: BlockRejected) -> list:
        """End the open block because of ``error`` (the peer's); returns what to send."""
        block = self._block
        if block is None:
            raise UnexpectedMessage(f"no open block to reject: {error}") from error
        self._rejected.add(block.block)
        self._end(block, "rejected")
        return [m.BlockAbort(block.block, block.first_batch, block.last_batch,
                             f"rejected: {error}"), *self._next()]

    def _next(self) -> list:
        return []

    def _peer_aborted(self, message: m.BlockAbort) -> bool:
        """The peer rejected our open block: close it too (True if it was that block)."""
        block = self._block
        if block is None or message.block != block.block:
            return False
        self._rejected.add(block.block)
        self._end(block, "rejected")
        return True


class ReceiverPostprocessing(_Common):
    """The receiver's core: forms blocks, runs Cascade as the correcting side."""

    def __init__(self, config: PostprocessingConfig, rng: np.random.Generator) -> None:
        super().__init__(config)
        self.rng = rng
        self._records: deque[BatchRecord] = deque()
        self._slot_start = 0
        self._next_block = 0
        self._block: Block | None = None
        self._cascade: CascadeReceiver | None = None
        self._final = False

    @property
    def idle(self) -> bool:
        return self._block is None and not self._startable()

    def _next(self) -> list:
        return self._maybe_start()

    def add_record(self, record: BatchRecord) -> list:
        self._records.append(record)
        return self._maybe_start()

    def finish(self) -> list:
        """No more records will come: process a last partial block if long enough."""
        self._final = True
        return self._maybe_start()

    def _startable(self) -> bool:
        bits = sum(len(r.key) for r in self._records)
        return bits >= self.config.block_bits or (
            self._final and bits >= self.config.min_block_bits)

    def _maybe_start(self) -> list:
        out: list = []
        while self._block is None and self._startable():
            records: list[BatchRecord] = []
            while self._records and sum(len(r.key) for r in records) < self.config.block_bits:
                records.append(self._records.popleft())
            block = Block(self._next_block, records, self._slot_start, records[-1].slot_end,
                          key=records_key(records))
            self._next_block += 1
            self._slot_start = block.slot_end
            block.estimate = estimate_block(records, block.slot_start, block.slot_end,
                                            self.config)
            reason = abort_reason(block.estimate, self.config)
            if reason is not None:
                out.append(m.BlockAbort(block.block, block.first_batch, block.last_batch, reason))
                self._close(block, "aborted")
                continue
            seed = int(self.rng.integers(2**62))
            out.append(m.BlockStart(block.block, block.first_batch, block.last_batch,
                                    block.slot_start, block.slot_end, seed))
            self._block = block
            self._cascade = CascadeReceiver(block.key, block.estimate.e_mu,
                                            self.config.schedule, seed=seed,
                                            block_id=block.block)
            out.append(self._cascade.start())
        return out

    def on_message(self, message) -> list:
        """The sender's message about the open block -> what to send back.

        Raises ``BlockRejected`` (then call ``reject``) or ``UnexpectedMessage``."""
        block, cascade = self._block, self._cascade
        if isinstance(message, m.BlockAbort) and self._peer_aborted(message):
            return self._maybe_start()
        if self._stale(message):
            return []
        if block is None or cascade is None:
            raise UnexpectedMessage(f"{type(message).__name__} while no block is open")
        if isinstance(message, ParityReply):
            reply = cascade.receive_reply(message)
            if isinstance(reply, CascadeDone):
                block.key = cascade.key
                block.cascade_rounds = reply.rounds
                block.leaked_bits = reply.leaked_bits
            return [reply]
        if isinstance(message, VerifyTag):
            result = self.verifier.check(message, block.key)
            if not result.ok:
                self._end(block, "failed_verification")
                return [result, *self._maybe_start()]
            block.out_len = output_length(block, self.config)
            return [result]
        if isinstance(message, m.PrivacyAmplification):
            # the sender's commit: it has finished the block (and refilled its auth pool
            # from it), so a bad one cannot end this block alone; it ends the session
            if message.block != block.block or message.out_len != block.out_len:
                raise MalformedMessage(f"block {block.block}: PA for block {message.block} "
                                       f"of length {message.out_len}, we computed "
                                       f"{block.out_len}")
            if block.out_len and len(message.seed) != -(-seed_length(block.n, block.out_len)
                                                        // 8):
                raise MalformedMessage(f"block {block.block}: PA seed of "
                                       f"{len(message.seed)} bytes")
            seed = np.unpackbits(np.frombuffer(message.seed, np.uint8),
                                 count=seed_length(block.n, block.out_len))
            finish_block(block, hash_block(block, seed), self.config)
            self._end(block, "ok")
            return self._maybe_start()
        raise UnexpectedMessage(f"{type(message).__name__} at the receiver's post-processing")


class SenderPostprocessing(_Common):
    """The sender's core: answers Cascade from its key, proposes verification and PA seeds."""

    def __init__(self, config: PostprocessingConfig, rng: np.random.Generator) -> None:
        super().__init__(config)
        self.rng = rng
        self.records: dict[int, BatchRecord] = {}
        self._slot_start = 0
        self._block: Block | None = None
        self._cascade: CascadeSender | None = None

    def add_record(self, record: BatchRecord) -> None:
        self.records[record.batch] = record

    def _take(self, first: int, last: int) -> list[BatchRecord]:
        missing = [b for b in range(first, last + 1)
                   if b not in self.records or not self.records[b].complete]
        if missing or first > last:
            raise UnexpectedMessage(f"block of batches {first}..{last}: batches {missing} "
                                    "were never sifted to the end")
        return [self.records.pop(b) for b in range(first, last + 1)]

    def on_message(self, message) -> list:
        """The receiver's message -> what to send back.

        Raises ``BlockRejected`` (then call ``reject``) or ``UnexpectedMessage``."""
        if isinstance(message, m.BlockAbort) and self._peer_aborted(message):
            return []
        if isinstance(message, (m.BlockAbort, m.BlockStart)) and self._block is not None:
            raise UnexpectedMessage(f"{type(message).__name__} for block {message.block} "
                                    f"while block {self._block.block} is open")
        if isinstance(message, m.BlockAbort):
            records = self._take(message.first_batch, message.last_batch)
            block = Block(message.block, records, self._slot_start, records[-1].slot_end)
            block.estimate = estimate_block(records, block.slot_start, block.slot_end,
                                            self.config)
            self._slot_start = block.slot_end
            self._close(block, "aborted")
            return []
        if isinstance(message, m.BlockStart):
            records = self._take(message.first_batch, message.last_batch)
            block = Block(message.block, records, self._slot_start, records[-1].slot_end,
                          key=records_key(records))
            self._slot_start = block.slot_end
            block.estimate = estimate_block(records, block.slot_start, block.slot_end,
                                            self.config)
            self._block = block  # open: a rejection below closes it
            if (message.slot_start, message.slot_end) != (block.slot_start, block.slot_end):
                raise BlockRejected(f"block {message.block}: slots [{message.slot_start}, "
                                    f"{message.slot_end}), ours [{block.slot_start}, "
                                    f"{block.slot_end})")
            reason = abort_reason(block.estimate, self.config)
            if reason is not None:
                raise BlockRejected(f"block {block.block}: receiver started it but {reason}")
            self._cascade = CascadeSender(block.key, block_id=block.block)
            return []
        if self._stale(message):
            return []
        block, cascade = self._block, self._cascade
        if block is None or cascade is None:
            raise UnexpectedMessage(f"{type(message).__name__} while no block is open")
        if isinstance(message, ParityQuery):
            return [cascade.receive_query(message)]
        if isinstance(message, CascadeDone):
            cascade.receive_done(message)
            block.cascade_rounds = message.rounds
            block.leaked_bits = message.leaked_bits
            return [self.verifier.propose(block.block, block.key, self.rng.bytes(16))]
        if isinstance(message, VerifyResult):
            if not self.verifier.conclude(message):
                self._end(block, "failed_verification")
                return []
            block.out_len = output_length(block, self.config)
            seed = self.rng.integers(0, 2, seed_length(block.n, block.out_len), dtype=np.uint8)
            finish_block(block, hash_block(block, seed), self.config)
            self._end(block, "ok")
            return [m.PrivacyAmplification(block.block, block.out_len,
                                           np.packbits(seed).tobytes())]
        raise UnexpectedMessage(f"{type(message).__name__} at the sender's post-processing")
