"""Cutting a block of QKD key bits into ``key_size``-bit keys, with ids both ends agree on.

Both ends of a link hold the same final key bits per block, so they cut them the same way
(in order, from bit 0) and name each key by a UUIDv5 of ``link/block/offset``: the same bits
get the same id at both ends without a message. Bits after the last whole key are dropped
(both ends drop the same ones) and counted.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np

KEY_ID_NAMESPACE = uuid.UUID("5b0f6a43-2a8e-5c8e-9d0a-71f3a0c0e014")  # qnet key ids


def key_id(link: str, block: int, offset: int) -> str:
    """The id of the key that starts at bit ``offset`` of ``block`` on ``link``."""
    return str(uuid.uuid5(KEY_ID_NAMESPACE, f"{link}/{block}/{offset}"))


@dataclass(frozen=True)
class Cut:
    keys: list[tuple[str, int, bytes]]  # (key id, bit offset, key bytes)
    leftover_bits: int  # bits after the last whole key, dropped


def cut_block(link: str, block: int, bits: np.ndarray, key_size: int) -> Cut:
    """Cut ``bits`` (0/1 values, in order) into keys of ``key_size`` bits (a multiple of 8)."""
    if key_size <= 0 or key_size % 8:
        raise ValueError(f"key_size must be a positive multiple of 8, got {key_size}")
    bits = np.asarray(bits, dtype=np.uint8)
    count = len(bits) // key_size
    packed = np.packbits(bits[:count * key_size]).tobytes()
    step = key_size // 8
    keys = [(key_id(link, block, i * key_size), i * key_size, packed[i * step:(i + 1) * step])
            for i in range(count)]
    return Cut(keys, len(bits) - count * key_size)
