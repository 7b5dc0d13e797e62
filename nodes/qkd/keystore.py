"""Final keys of one node pair, appended as blocks complete, each under its own id.

Kept in the node's memory (the key service serves them later). ``digest`` hashes every key
bit in order, so the two ends of a link can be compared in results without revealing keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


def bits_digest(bits: np.ndarray) -> str:
    """SHA-256 of packed bits plus their count (so trailing zeros are not ambiguous)."""
    return hashlib.sha256(np.packbits(bits).tobytes() + len(bits).to_bytes(8, "little")).hexdigest()


@dataclass
class KeyStore:
    peer: str
    keys: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, key_id: str, bits: np.ndarray) -> None:
        if key_id in self.keys:
            raise KeyError(f"key id {key_id!r} already stored")
        self.keys[key_id] = bits

    @property
    def total_bits(self) -> int:
        return sum(len(k) for k in self.keys.values())

    def digest(self) -> str:
        parts = list(self.keys.values())
        return bits_digest(np.concatenate(parts) if parts else np.zeros(0, np.uint8))
