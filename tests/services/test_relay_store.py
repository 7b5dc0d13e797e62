"""The relay's LinkKeys on the real SQLite key store: take, claim before and after the bits
arrive, a key used twice, and where a restarted origin resumes."""

from __future__ import annotations

import numpy as np
import pytest

from nodes.services.keys import KeyDB, cut_block
from nodes.services.relay.core import LinkKeyUsed
from nodes.services.relay.shell import RELAY_SAE, StoreKeys, last_relayed


def block(seed: int) -> list[tuple[str, int, bytes]]:
    bits = np.random.default_rng(seed).integers(0, 2, 1024, dtype=np.uint8)
    return cut_block("a-b", seed, bits, 256).keys  # 4 keys of 32 bytes


def test_take_claim_and_used_keys(tmp_path) -> None:
    a, b = KeyDB(tmp_path / "a.sqlite"), KeyDB(tmp_path / "b.sqlite")
    keys = block(0)
    a.deposit("b", "a-b", 0, keys)
    at_a, at_b = StoreKeys(a), StoreKeys(b)
    kid, pad = at_a.take("b", 32)
    assert (kid, pad) == (keys[0][0], keys[0][2])
    assert at_b.claim("a", kid) is None  # b has not stored the block yet: marked, waiting
    assert at_b.claim("a", kid) is None  # asking again is no conflict
    b.deposit("a", "a-b", 0, keys)
    assert at_b.claim("a", kid) == pad  # the same bits once they are there
    assert b.get([kid])[kid].state == "delivered" and b.get([kid])[kid].slave_sae == RELAY_SAE
    with pytest.raises(LinkKeyUsed):
        at_b.claim("a", kid)  # never twice
    assert b.stored_count("a") == 3 and a.stored_count("b") == 3  # one for one at both ends
    for _ in range(3):
        assert at_a.take("b", 32) is not None
    assert at_a.take("b", 32) is None  # the pool is empty: nothing spent


def test_a_restarted_origin_resumes_after_its_stored_keys(tmp_path) -> None:
    db = KeyDB(tmp_path / "a.sqlite")
    assert last_relayed(db, "relay:a>d") is None
    db.deposit("d", "relay:a>d", 5, [("id-5", 0, b"k" * 32)])
    db.deposit("d", "relay:a>d", 9, [("id-9", 0, b"k" * 32)])
    assert last_relayed(db, "relay:a>d") == 9
