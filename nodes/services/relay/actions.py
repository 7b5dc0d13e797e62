"""What the relay core needs (``LinkKeys``) and what it returns (actions, stats).

The core asks the node's key manager for link keys through ``LinkKeys`` and answers every
input with a list of actions for the shell: ``Send`` a frame, publish an ``Event``,
``Deposit`` an end-to-end key. ``RelayStats`` is its accounting.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol


class LinkKeyUsed(Exception):
    """A link key id the peer named was already used here (the two ends disagree)."""


class LinkKeys(Protocol):
    """What the relay needs from the node's key manager (whole keys, one per relayed key)."""

    def take(self, peer: str, size_bytes: int) -> tuple[str, bytes] | None:
        """Remove one available key shared with ``peer`` (this node is the link's
        allocator): (id, its first ``size_bytes`` bytes); None if the pool is empty."""

    def claim(self, peer: str, key_id: str) -> bytes | None:
        """Remove the key ``key_id`` shared with ``peer`` (the allocator picked it); None
        while its bits have not arrived (it stays marked), ``LinkKeyUsed`` if already used."""


def allocator(a: str, b: str) -> str:
    """The end of link (a, b) that picks its keys (nodes.services.kme.peering's rule)."""
    return min(a, b)


@dataclass(frozen=True)
class Send:
    peer: str
    frame: bytes


@dataclass(frozen=True)
class Event:
    kind: str
    fields: dict


@dataclass(frozen=True)
class Deposit:
    """Store end-to-end key ``key`` (number ``seq`` of its path) for ``peer``, the far end."""

    peer: str
    relay_id: str
    seq: int
    key: bytes


Action = Send | Event | Deposit


def xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


@dataclass
class RelayStats:
    consumed_bits: Counter = field(default_factory=Counter)  # peer -> link-key bits spent
    counts: Counter = field(default_factory=Counter)  # originated, forwarded, stored, ...
    failures: Counter = field(default_factory=Counter)  # reason -> relayed keys lost

    def as_dict(self) -> dict:
        return {"consumed_bits": dict(self.consumed_bits),
                "bits_consumed": sum(self.consumed_bits.values()),
                **dict(self.counts), "failures": dict(self.failures)}
