"""The key store: one SQLite database per node (WAL, ``synchronous=FULL``), keys by peer.

Every key has a UUID id, its peer (the other end of the link that made it) and a state:
``available`` (in the pool), ``reserved`` (released to a named slave SAE, awaiting its
``dec_keys``), ``delivered`` (handed to an SAE; never again) or ``discarded`` (dropped: pool
full, or lost in a failed exchange). Each call is one transaction committed (and fsynced)
before it returns, so a key counts as stored, reserved or delivered only once that is on
disk: a process killed at any point finds every key it had stored and serves none twice.

An instruction from the peer's KME may arrive before this node stored the key (the two ends
finish a block at slightly different times): it is recorded on a row without material, and
the deposit fills the material in, keeping the state the instruction set. Such a row is never
``available``, so an ``available`` key always has its material (the pool queries rely on it:
they read the ``(peer, state, seq)`` index only).

A key released to several slave SAEs (ETSI 014 ``additional_slave_SAE_IDs``) has one
``slaves`` row per slave: each may claim it once, and it is ``delivered`` once all have.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

AVAILABLE, RESERVED, DELIVERED, DISCARDED = "available", "reserved", "delivered", "discarded"
STATES = (AVAILABLE, RESERVED, DELIVERED, DISCARDED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id TEXT NOT NULL UNIQUE,
    peer TEXT NOT NULL,
    link TEXT,
    block INTEGER,
    bit_offset INTEGER,
    material BLOB,
    state TEXT NOT NULL CHECK (state IN ('available', 'reserved', 'delivered', 'discarded')),
    master_sae TEXT,
    slave_sae TEXT,
    size INTEGER,
    changed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_pool ON keys (peer, state, seq);
-- available keys per peer, kept by triggers in the same transactions (status reads one row)
CREATE TABLE IF NOT EXISTS pool (peer TEXT PRIMARY KEY, available INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS pool_insert AFTER INSERT ON keys WHEN new.state = 'available'
BEGIN
    INSERT INTO pool (peer, available) VALUES (new.peer, 1)
    ON CONFLICT (peer) DO UPDATE SET available = available + 1;
END;
CREATE TRIGGER IF NOT EXISTS pool_update AFTER UPDATE OF state ON keys
WHEN (old.state = 'available') != (new.state = 'available')
BEGIN
    INSERT INTO pool (peer, available)
    VALUES (new.peer, CASE WHEN new.state = 'available' THEN 1 ELSE -1 END)
    ON CONFLICT (peer) DO UPDATE SET available = available + excluded.available;
END;
-- the slave SAEs of a key released to more than one (none: keys.slave_sae alone)
CREATE TABLE IF NOT EXISTS slaves (
    key_id TEXT NOT NULL,
    slave_sae TEXT NOT NULL,
    claimed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, slave_sae)
) WITHOUT ROWID;
"""


class NotEnoughKeys(Exception):
    """Fewer keys available for the peer than asked for (nothing was taken)."""

    def __init__(self, peer: str, have: int, wanted: int) -> None:
        super().__init__(f"{have} keys available for {peer}, {wanted} asked for")
        self.peer, self.have, self.wanted = peer, have, wanted


class NotReleased(Exception):
    """Some asked-for key ids are not released to the caller (nothing was delivered)."""

    def __init__(self, ids: list[str], pending: list[str]) -> None:
        super().__init__(f"{len(ids)} key ids not released to the caller"
                         + (f", {len(pending)} released but not yet stored" if pending else ""))
        self.ids = ids  # not released to this caller at all
        self.pending = pending  # released to it, material not stored yet


@dataclass(frozen=True)
class Conflict:
    """A peer's instruction about a key this store had already given another state."""

    key_id: str
    state: str


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    peer: str
    material: bytes | None
    state: str
    master_sae: str | None
    slave_sae: str | None
    size: int | None


@dataclass(frozen=True)
class Deposit:
    stored: int
    dropped: list[str]  # pool full: not stored (the allocator tells its peer to discard them)
    duplicates: int  # ids already stored with material (ignored)


class KeyDB:
    """The SQLite layer; every method is one transaction, committed on return or, inside
    ``batch``, with the batch (call from one thread at a time: ``KeyManager`` does)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # key material: 0600
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # the WAL is fsynced at every commit
        self.db.executescript(_SCHEMA)
        self.commits = 0  # durable commits (fsyncs)
        self.transactions = 0  # calls that changed the store (several per commit in a batch)
        self.in_batch = False

    def close(self) -> None:
        self.db.close()

    def _tx(self):
        return _Transaction(self)

    def batch(self):
        """``with db.batch():`` the calls inside commit together, once, at the end."""
        return _Batch(self)

    def deposit(self, peer: str, link: str, block: int, keys: list[tuple[str, int, bytes]],
                limit: int | None = None) -> Deposit:
        """Store ``keys`` (id, bit offset, material) as available; beyond ``limit`` available
        keys for ``peer`` the rest are dropped. A row an instruction created keeps its state."""
        now = time.time()
        stored = duplicates = 0
        dropped: list[str] = []
        with self._tx() as db:
            available = self._available(peer)
            for kid, offset, material in keys:
                row = db.execute("SELECT material, state FROM keys WHERE key_id = ?",
                                 (kid,)).fetchone()
                if row is not None:
                    if row[0] is not None or row[1] == DISCARDED:
                        duplicates += row[0] is not None
                        continue
                    db.execute("UPDATE keys SET material = ?, link = ?, block = ?, bit_offset = ?,"
                               " changed_at = ? WHERE key_id = ?",
                               (material, link, block, offset, now, kid))
                    stored += 1
                    continue
                if limit is not None and available >= limit:
                    dropped.append(kid)
                    continue
                db.execute("INSERT INTO keys (key_id, peer, link, block, bit_offset, material,"
                           " state, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (kid, peer, link, block, offset, material, AVAILABLE, now))
                stored += 1
                available += 1
        return Deposit(stored, dropped, duplicates)

    def allocate(self, peer: str, number: int, state: str, master_sae: str, slave_sae: str,
                 size: int, also: list[str] | tuple[str, ...] = ()) -> list[tuple[str, bytes]]:
        """Take the ``number`` oldest available keys of ``peer`` into ``state`` (reserved or
        delivered) for the SAE pair (reserved: also for the slaves ``also``); all or nothing
        (``NotEnoughKeys``)."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT key_id, material FROM keys WHERE peer = ? AND state = ? ORDER BY seq "
                "LIMIT ?", (peer, AVAILABLE, number)).fetchall()
            if len(rows) < number:
                raise NotEnoughKeys(peer, len(rows), number)
            now = time.time()
            db.executemany("UPDATE keys SET state = ?, master_sae = ?, slave_sae = ?, size = ?,"
                           " changed_at = ? WHERE key_id = ?",
                           [(state, master_sae, slave_sae, size, now, kid) for kid, _ in rows])
            if state == RESERVED:
                self._release_to(db, [kid for kid, _ in rows], slave_sae, also)
        return [(kid, bytes(material)[:size // 8]) for kid, material in rows]

    def apply(self, peer: str, ids: list[str], state: str, master_sae: str | None = None,
              slave_sae: str | None = None, size: int | None = None,
              also: list[str] | tuple[str, ...] = ()) -> list[Conflict]:
        """Put keys the peer's KME allocated into ``state`` (a row without material if not
        stored yet; reserved: for ``slave_sae`` and the slaves ``also``). Keys already out of
        ``available`` are left alone and returned."""
        conflicts: list[Conflict] = []
        taken: list[str] = []
        now = time.time()
        with self._tx() as db:
            for kid in ids:
                row = db.execute("SELECT state FROM keys WHERE key_id = ?", (kid,)).fetchone()
                if row is None:
                    db.execute("INSERT INTO keys (key_id, peer, state, master_sae, slave_sae, "
                               "size, changed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (kid, peer, state, master_sae, slave_sae, size, now))
                    taken.append(kid)
                elif row[0] != AVAILABLE:
                    conflicts.append(Conflict(kid, row[0]))
                else:
                    wipe = ", material = NULL" if state == DISCARDED else ""
                    db.execute(f"UPDATE keys SET state = ?, master_sae = ?, slave_sae = ?, "
                               f"size = ?, changed_at = ?{wipe} WHERE key_id = ?",
                               (state, master_sae, slave_sae, size, now, kid))
                    taken.append(kid)
            if state == RESERVED:
                self._release_to(db, taken, slave_sae, also)
        return conflicts

    @staticmethod
    def _release_to(db: sqlite3.Connection, ids: list[str], slave_sae: str | None,
                    also: list[str] | tuple[str, ...]) -> None:
        """Record the slave SAEs of keys released to more than one (nothing for one)."""
        if also:
            db.executemany("INSERT INTO slaves (key_id, slave_sae) VALUES (?, ?)",
                           [(kid, sae) for kid in ids for sae in (slave_sae, *also)])

    def claim(self, ids: list[str], caller: str, master_sae: str) -> list[tuple[str, bytes]]:
        """Deliver the keys ``ids`` released to slave SAE ``caller`` by ``master_sae``; all or
        nothing (``NotReleased``: ids not released to the caller, or not stored yet). A key
        with several slaves is delivered to each once, and leaves ``reserved`` after the last."""
        with self._tx() as db:
            found, slaves = {}, {}
            for kid in ids:
                found[kid] = db.execute(
                    "SELECT material, state, master_sae, slave_sae, size FROM keys WHERE "
                    "key_id = ?", (kid,)).fetchone()
                slaves[kid] = dict(db.execute(
                    "SELECT slave_sae, claimed FROM slaves WHERE key_id = ?", (kid,)))
            refused = [kid for kid, row in found.items()
                       if row is None or row[1] != RESERVED or row[2] != master_sae
                       or (slaves[kid].get(caller, 1) != 0 if slaves[kid] else row[3] != caller)]
            pending = [kid for kid, row in found.items()
                       if kid not in refused and row[0] is None]
            if refused or pending:
                raise NotReleased(refused, pending)
            now = time.time()
            done = [kid for kid in ids if sum(v == 0 for v in slaves[kid].values()) <= 1]
            db.executemany("UPDATE slaves SET claimed = 1 WHERE key_id = ? AND slave_sae = ?",
                           [(kid, caller) for kid in ids if slaves[kid]])
            db.executemany("UPDATE keys SET state = ?, changed_at = ? WHERE key_id = ?",
                           [(DELIVERED, now, kid) for kid in done])
        return [(kid, bytes(found[kid][0])[:found[kid][4] // 8]) for kid in ids]

    def discard(self, ids: list[str]) -> None:
        """Take keys out of use for good (an exchange about them failed half-way)."""
        now = time.time()
        with self._tx() as db:
            db.executemany("UPDATE keys SET state = ?, material = NULL, changed_at = ? "
                           "WHERE key_id = ?", [(DISCARDED, now, kid) for kid in ids])

    def get(self, ids: list[str]) -> dict[str, StoredKey]:
        out = {}
        for kid in ids:
            row = self.db.execute("SELECT key_id, peer, material, state, master_sae, slave_sae,"
                                  " size FROM keys WHERE key_id = ?", (kid,)).fetchone()
            if row is not None:
                material = None if row[2] is None else bytes(row[2])
                out[kid] = StoredKey(row[0], row[1], material, *row[3:])
        return out

    def _available(self, peer: str) -> int:
        row = self.db.execute("SELECT available FROM pool WHERE peer = ?", (peer,)).fetchone()
        return row[0] if row else 0

    def stored_count(self, peer: str) -> int:
        """Keys of ``peer`` in the pool (available, material stored)."""
        return self._available(peer)

    def counts(self) -> dict[str, dict[str, int]]:
        """Keys per peer and state (material stored or not)."""
        out: dict[str, dict[str, int]] = {}
        for peer, state, n in self.db.execute(
                "SELECT peer, state, count(*) FROM keys GROUP BY peer, state"):
            out.setdefault(peer, dict.fromkeys(STATES, 0))[state] = n
        return out


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception); inside ``batch`` a
    savepoint instead, so one call's failure undoes only that call."""

    def __init__(self, store: KeyDB) -> None:
        self.store = store

    def __enter__(self) -> sqlite3.Connection:
        self.store.transactions += 1
        self.store.db.execute("SAVEPOINT call" if self.store.in_batch else "BEGIN IMMEDIATE")
        return self.store.db

    def __exit__(self, exc_type, exc, tb) -> None:
        db = self.store.db
        if self.store.in_batch:
            if exc_type is not None:
                db.execute("ROLLBACK TO call")
            db.execute("RELEASE call")
        elif exc_type is None:
            db.execute("COMMIT")
            self.store.commits += 1
        else:
            db.execute("ROLLBACK")


class _Batch:
    """Several calls in one transaction: one commit (one fsync) for all of them."""

    def __init__(self, store: KeyDB) -> None:
        self.store = store

    def __enter__(self) -> None:
        self.store.db.execute("BEGIN IMMEDIATE")
        self.store.in_batch = True

    def __exit__(self, exc_type, exc, tb) -> None:
        self.store.in_batch = False
        if exc_type is None:
            self.store.db.execute("COMMIT")
            self.store.commits += 1
        else:
            self.store.db.execute("ROLLBACK")
