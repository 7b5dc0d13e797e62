"""Key manager: cutting rule, SQLite states, durability across a reopen, pool limit."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import trio

from nodes.services.keys import (
    AVAILABLE,
    DELIVERED,
    DISCARDED,
    RESERVED,
    KeyDB,
    KeyManager,
    NotEnoughKeys,
    NotReleased,
    cut_block,
    key_id,
)


def bits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)


def test_cut_is_in_order_with_deterministic_ids() -> None:
    b = bits(1000)
    cut = cut_block("alice-bob", 3, b, 256)
    assert [offset for _, offset, _ in cut.keys] == [0, 256, 512]
    assert cut.leftover_bits == 1000 - 768
    assert cut.keys[1][2] == np.packbits(b[256:512]).tobytes()
    again = cut_block("alice-bob", 3, b.copy(), 256)
    assert [k for k, _, _ in again.keys] == [k for k, _, _ in cut.keys]
    assert cut.keys[0][0] == key_id("alice-bob", 3, 0)
    assert len({key_id("alice-bob", blk, off) for blk in range(5) for off in (0, 256)}) == 10
    assert key_id("alice-bob", 0, 0) != key_id("bob-carol", 0, 0)
    with pytest.raises(ValueError):
        cut_block("l", 0, b, 100)


def test_states_allocate_apply_claim(tmp_path) -> None:
    a, b = KeyDB(tmp_path / "a.sqlite"), KeyDB(tmp_path / "b.sqlite")
    keys = cut_block("l", 0, bits(2048), 256).keys
    assert a.deposit("bob", "l", 0, keys).stored == 8
    assert b.deposit("alice", "l", 0, keys).stored == 8
    assert a.deposit("bob", "l", 0, keys).duplicates == 8  # same block twice: ignored
    got = a.allocate("bob", 3, DELIVERED, "sae-a", "sae-b", 128)
    assert [k for k, _ in got] == [k for k, _, _ in keys[:3]]  # oldest first
    assert got[0][1] == keys[0][2][:16]  # truncated to the requested size
    assert b.apply("alice", [k for k, _ in got], RESERVED, "sae-a", "sae-b", 128) == []
    with pytest.raises(NotReleased) as refused:  # wrong caller, wrong master, unknown id
        b.claim([got[0][0]], "sae-x", "sae-a")
    assert refused.value.ids == [got[0][0]]
    with pytest.raises(NotReleased):
        b.claim([got[0][0]], "sae-b", "sae-x")
    with pytest.raises(NotReleased):
        b.claim([got[0][0], "00000000-0000-0000-0000-000000000000"], "sae-b", "sae-a")
    assert b.claim([got[0][0]], "sae-b", "sae-a") == [got[0]]  # nothing was taken above
    with pytest.raises(NotReleased):  # never twice
        b.claim([got[0][0]], "sae-b", "sae-a")
    assert [c.key_id for c in b.apply("alice", [got[0][0]], RESERVED, "x", "y", 8)] == [got[0][0]]
    with pytest.raises(NotEnoughKeys) as short:
        a.allocate("bob", 6, DELIVERED, "sae-a", "sae-b", 256)
    assert short.value.have == 5 and a.stored_count("bob") == 5  # all or nothing
    assert a.counts()["bob"][DELIVERED] == 3 and b.counts()["alice"][RESERVED] == 2


def test_instruction_before_deposit_keeps_its_state(tmp_path) -> None:
    db = KeyDB(tmp_path / "k.sqlite")
    keys = cut_block("l", 0, bits(512), 256).keys
    db.apply("alice", [keys[0][0]], RESERVED, "m", "s", 256)
    db.apply("alice", [keys[1][0]], DISCARDED)
    with pytest.raises(NotReleased) as early:
        db.claim([keys[0][0]], "s", "m")
    assert early.value.pending == [keys[0][0]] and early.value.ids == []
    assert db.deposit("alice", "l", 0, keys).stored == 1  # the discarded one stays out
    assert db.claim([keys[0][0]], "s", "m") == [(keys[0][0], keys[0][2])]
    assert db.stored_count("alice") == 0
    assert db.get([keys[1][0]])[keys[1][0]].material is None


def test_pool_limit_drops_and_reports(tmp_path) -> None:
    db = KeyDB(tmp_path / "k.sqlite")
    keys = cut_block("l", 0, bits(256 * 10), 256).keys
    result = db.deposit("bob", "l", 0, keys, limit=4)
    assert result.stored == 4 and result.dropped == [k for k, _, _ in keys[4:]]
    db.allocate("bob", 2, DELIVERED, "m", "s", 256)
    more = cut_block("l", 1, bits(256 * 3, 1), 256).keys
    assert db.deposit("bob", "l", 1, more, limit=4).stored == 2


def test_committed_state_survives_a_killed_process(tmp_path) -> None:
    """A process that stored and delivered keys is SIGKILLed; a reopen finds exactly that."""
    path = tmp_path / "k.sqlite"
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from nodes.services.keys import KeyDB, DELIVERED, cut_block
        db = KeyDB({str(path)!r})
        b = np.random.default_rng(0).integers(0, 2, 256 * 50, dtype=np.uint8)
        db.deposit("bob", "l", 0, cut_block("l", 0, b, 256).keys)
        got = db.allocate("bob", 7, DELIVERED, "m", "s", 256)
        print(",".join(k for k, _ in got), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == -9, run.stderr
    delivered = run.stdout.strip().split(",")
    db = KeyDB(path)
    assert db.stored_count("bob") == 43
    assert {k for k, s in db.get(delivered).items() if s.state == DELIVERED} == set(delivered)
    again = db.allocate("bob", 43, DELIVERED, "m", "s", 256)
    assert not set(delivered) & {k for k, _ in again}
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_manager_deposits_off_the_loop_and_wakes_waiters(tmp_path) -> None:
    manager = KeyManager(tmp_path / "k.sqlite", key_size=256, max_key_count=3,
                         limited_peers={"bob"})
    woke = []

    async def waiter() -> None:
        await manager.deposit_event().wait()
        woke.append(manager.db.stored_count("bob"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        result = await manager.deposit("bob", "l", 0, bits(256 * 5 + 10))
    assert result.stored == 3 and woke == [3]
    peer, dropped = manager.dropped.receive_nowait()
    assert peer == "bob" and len(dropped) == 2
    assert manager.counters["leftover_bits"] == 10
    assert manager.db.counts()["bob"][AVAILABLE] == 3
    manager.close()


def test_a_failing_call_in_a_batch_undoes_only_itself(tmp_path) -> None:
    db = KeyDB(tmp_path / "k.sqlite")
    db.deposit("bob", "l", 0, cut_block("l", 0, bits(256 * 4), 256).keys)
    with db.batch():
        first = db.allocate("bob", 1, DELIVERED, "m", "s", 256)
        with pytest.raises(NotEnoughKeys):
            db.allocate("bob", 9, DELIVERED, "m", "s", 256)
        second = db.allocate("bob", 2, DELIVERED, "m", "s", 256)
    assert db.commits == 2 and db.stored_count("bob") == 1  # the deposit, then one batch
    assert not {k for k, _ in first} & {k for k, _ in second}
    reopened = KeyDB(tmp_path / "k.sqlite")
    assert reopened.counts()["bob"][DELIVERED] == 3


async def test_concurrent_calls_share_commits_and_each_gets_its_own_answer(tmp_path) -> None:
    manager = KeyManager(tmp_path / "k.sqlite", key_size=256, max_key_count=10_000)
    await manager.deposit("bob", "l", 0, bits(256 * 100))
    got: list = []

    async def take(n: int) -> None:
        try:
            got.append(await manager.call(manager.db.allocate, "bob", n, DELIVERED, "m", "s",
                                          256))
        except NotEnoughKeys as exc:
            got.append(exc)

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(take, 200 if i == 7 else 2)
    ids = [k for r in got if isinstance(r, list) for k, _ in r]
    assert len(ids) == len(set(ids)) == 78 and sum(isinstance(r, NotEnoughKeys) for r in got) == 1
    assert manager.db.commits < 41  # grouped: fewer commits than calls
    assert manager.counters["batches"] == manager.db.commits  # the deposit was one too
    manager.close()


def test_pool_count_follows_every_state_change(tmp_path) -> None:
    db = KeyDB(tmp_path / "k.sqlite")
    keys = cut_block("l", 0, bits(256 * 10), 256).keys

    def counted() -> int:
        return db.db.execute("SELECT count(*) FROM keys WHERE peer = 'bob' AND state = ?",
                             (AVAILABLE,)).fetchone()[0]

    db.deposit("bob", "l", 0, keys[:6])
    db.apply("bob", [keys[6][0]], RESERVED, "m", "s", 256)  # placeholder, not available
    db.deposit("bob", "l", 0, keys[6:])
    db.allocate("bob", 2, DELIVERED, "m", "s", 256)
    db.apply("bob", [keys[3][0], keys[4][0]], RESERVED, "m", "s", 256)
    db.discard([keys[5][0]])
    with db.batch():
        db.allocate("bob", 1, DELIVERED, "m", "s", 256)
        with pytest.raises(NotEnoughKeys):
            db.allocate("bob", 50, DELIVERED, "m", "s", 256)
    assert db.stored_count("bob") == counted() == 3
    assert KeyDB(tmp_path / "k.sqlite").stored_count("bob") == 3 and db.stored_count("x") == 0
