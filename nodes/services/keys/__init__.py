"""The node's key manager: QKD output cut into fixed-size keys, stored durably in SQLite.

``cutting`` turns a block of key bits into keys with ids both link ends derive alike;
``store`` is the SQLite layer (one database per node, WAL, durable commits); ``manager`` the
trio shell that runs the store off the event loop and wakes whoever waits for a deposit.
"""

from nodes.services.keys.cutting import KEY_ID_NAMESPACE, Cut, cut_block, key_id
from nodes.services.keys.manager import KeyManager
from nodes.services.keys.store import (
    AVAILABLE,
    DELIVERED,
    DISCARDED,
    RESERVED,
    Conflict,
    KeyDB,
    NotEnoughKeys,
    NotReleased,
    StoredKey,
)

__all__ = ["AVAILABLE", "DELIVERED", "DISCARDED", "KEY_ID_NAMESPACE", "RESERVED", "Conflict",
           "Cut", "KeyDB", "KeyManager", "NotEnoughKeys", "NotReleased", "StoredKey",
           "cut_block", "key_id"]
