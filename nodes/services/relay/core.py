"""Trusted key relay of one node (sans-I/O): keys across a chain of QKD links, hop by hop.

The origin ``path[0]`` makes a fresh key K and sends ``K xor L1`` to ``path[1]``, where L1 is
one key it takes from its key manager for that link; every relay ``path[i]`` takes the same
link key by id from its own key manager, recovers K (a trusted relay sees the key), pads it
with a key of its next link and forwards it; the target stores K for the origin and answers
with an ack that travels back, on which the origin stores K too — so both ends' key managers
hold K under the same id, like a direct key. Every link spends exactly ``len(K)`` bits of
link key per relayed key, at each of its ends (``consumed_bits``).

A forward whose link key has not reached the receiver's key manager yet (the two ends store
QKD blocks at slightly different times) waits up to ``claim_timeout_s``; a relay with no key
on its next link holds K up to ``hold_timeout_s``; either timeout sends a failed ack back and
wastes what was spent. The core reads no clock and opens no socket: the shell passes ``now``,
delivers frames, calls ``retry`` when keys arrive, and wakes it at ``next_deadline``. Key
storage is the injected ``LinkKeys`` (synchronous: the key manager is a local database).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from nodes.errors import RemoteProtocolError
from nodes.services.relay.messages import (
    BadRelayMessage,
    RelayAck,
    RelayForward,
    open_frame,
    seal,
)

CLAIM_TIMEOUT_S = 5.0
HOLD_TIMEOUT_S = 5.0
ORIGIN_TIMEOUT_S = 30.0
MAX_WAITING = 256  # forwards waiting for a link key, per node (a peer cannot make us hold more)


class LinkKeyUsed(Exception):
    """A link key id the peer named was already used here (the two ends disagree)."""


class LinkKeys(Protocol):
    """What the relay needs from the node's key manager (whole keys, one per relayed key)."""

    def take(self, peer: str, size_bytes: int) -> tuple[str, bytes] | None:
        """Remove one available key of ``size_bytes`` shared with ``peer``: (id, bytes)."""

    def claim(self, peer: str, key_id: str) -> bytes | None:
        """Remove the key ``key_id`` shared with ``peer``; None if it has not arrived yet,
        ``LinkKeyUsed`` if it was already used."""

    def deposit(self, peer: str, key_id: str, key: bytes) -> None:
        """Store an end-to-end key shared with ``peer`` (the far end of a relay path)."""


@dataclass(frozen=True)
class Send:
    peer: str
    frame: bytes


@dataclass(frozen=True)
class Event:
    kind: str
    fields: dict


Action = Send | Event


def xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


@dataclass
class _Waiting:
    deadline: float
    message: RelayForward
    key: bytes | None = None  # K once recovered (a relay waiting for its next link's key)


@dataclass
class RelayStats:
    consumed_bits: Counter = field(default_factory=Counter)  # peer -> link-key bits spent
    counts: Counter = field(default_factory=Counter)  # originated, forwarded, stored, ...
    failures: Counter = field(default_factory=Counter)  # reason -> relayed keys lost

    def as_dict(self) -> dict:
        return {"consumed_bits": dict(self.consumed_bits),
                "bits_consumed": sum(self.consumed_bits.values()),
                **dict(self.counts), "failures": dict(self.failures)}


class RelayCore:
    """One node's part in every relay path through it (origin, relay or target)."""

    def __init__(self, name: str, keys: LinkKeys, secrets: Mapping[str, bytes], *,
                 claim_timeout_s: float = CLAIM_TIMEOUT_S,
                 hold_timeout_s: float = HOLD_TIMEOUT_S,
                 origin_timeout_s: float = ORIGIN_TIMEOUT_S,
                 max_waiting: int = MAX_WAITING) -> None:
        self.name = name
        self.keys = keys
        self._secrets = dict(secrets)
        self.claim_timeout_s = claim_timeout_s
        self.hold_timeout_s = hold_timeout_s
        self.origin_timeout_s = origin_timeout_s
        self.max_waiting = max_waiting
        self._waiting: list[_Waiting] = []
        self._pending: dict[str, tuple[bytes, str, float]] = {}  # origin: id -> K, target, dl
        self.stats = RelayStats()

    @property
    def pending(self) -> int:
        """Keys this node originated that are still on their way."""
        return len(self._pending)

    def next_deadline(self) -> float | None:
        times = [w.deadline for w in self._waiting] + [p[2] for p in self._pending.values()]
        return min(times, default=None)

    # -- origin ------------------------------------------------------------------------------

    def originate(self, relay_id: str, key: bytes, path: list[str], now: float
                  ) -> list[Action] | None:
        """Start relaying ``key`` along ``path`` (this node first); None while this node has
        no link key for ``path[1]`` (nothing was spent)."""
        if path[0] != self.name or len(path) < 2 or len(set(path)) != len(path):
            raise ValueError(f"{self.name}: cannot originate on path {path}")
        taken = self.keys.take(path[1], len(key))
        if taken is None:
            return None
        link_key_id, pad = taken
        self.stats.consumed_bits[path[1]] += 8 * len(pad)
        self.stats.counts["originated"] += 1
        self._pending[relay_id] = (key, path[-1], now + self.origin_timeout_s)
        forward = RelayForward(relay_id, path, 1, link_key_id, xor(key, pad))
        return self._forward(forward)

    # -- frames from peers -------------------------------------------------------------------

    def receive(self, peer: str, frame: bytes, now: float) -> list[Action]:
        """One frame from ``peer``; a bad one raises ``RemoteProtocolError`` (counted)."""
        secret = self._secrets.get(peer)
        if secret is None:
            raise BadRelayMessage(f"relay frame from {peer}, not a neighbour", peer=peer)
        try:
            message = open_frame(secret, frame, peer)
            if isinstance(message, RelayForward):
                return self._on_forward(peer, message, now)
            return self._on_ack(peer, message)
        except RemoteProtocolError as exc:
            self.stats.failures[getattr(exc, "counter", "relay_remote_error")] += 1
            raise

    def _on_forward(self, peer: str, message: RelayForward, now: float) -> list[Action]:
        path, hop = message.path, message.hop
        if hop >= len(path) or path[hop] != self.name or path[hop - 1] != peer:
            raise BadRelayMessage(f"relay_forward from {peer} for hop {hop} of {path}",
                                  peer=peer)
        if len(self._waiting) >= self.max_waiting:
            return self._fail(message, hop, "relay_busy")
        waiting = _Waiting(now + self.claim_timeout_s, message)
        done = self._advance(waiting, now)
        if done is None:
            self._waiting.append(waiting)
            return []
        return done

    def _on_ack(self, peer: str, ack: RelayAck) -> list[Action]:
        path, hop = ack.path, ack.hop
        if hop + 1 >= len(path) or path[hop] != self.name or path[hop + 1] != peer:
            raise BadRelayMessage(f"relay_ack from {peer} for hop {hop} of {path}", peer=peer)
        if hop > 0:
            return [Send(path[hop - 1], seal(self._secrets[path[hop - 1]],
                                             msgspec.structs.replace(ack, hop=hop - 1, mac=b"")))]
        pending = self._pending.pop(ack.relay_id, None)
        if pending is None:  # timed out here already
            self.stats.counts["late_acks"] += 1
            return []
        key, target, _ = pending
        if not ack.ok:
            self.stats.failures[ack.reason or "failed"] += 1
            return [Event("relay_failed", {"relay_id": ack.relay_id, "target": target,
                                           "reason": ack.reason})]
        self.keys.deposit(target, ack.relay_id, key)
        self.stats.counts["delivered"] += 1
        return [Event("relay_key_delivered", {"relay_id": ack.relay_id, "peer": target,
                                              "bits": 8 * len(key), "hops": len(path) - 1})]

    # -- waiting for link keys ---------------------------------------------------------------

    def retry(self, now: float) -> list[Action]:
        """Retry every waiting step (keys may have arrived) and expire the overdue ones."""
        actions: list[Action] = []
        still: list[_Waiting] = []
        for waiting in self._waiting:
            done = self._advance(waiting, now)
            if done is not None:
                actions += done
            elif now >= waiting.deadline:
                reason = "link_key_missing" if waiting.key is None else "no_next_link_key"
                actions += self._fail(waiting.message, waiting.message.hop, reason)
            else:
                still.append(waiting)
        self._waiting = still
        for relay_id, (_, target, deadline) in list(self._pending.items()):
            if now >= deadline:
                del self._pending[relay_id]
                self.stats.failures["origin_timeout"] += 1
                actions.append(Event("relay_failed", {"relay_id": relay_id, "target": target,
                                                      "reason": "origin_timeout"}))
        return actions

    def _advance(self, waiting: _Waiting, now: float) -> list[Action] | None:
        """Take this node's step for ``waiting`` if its keys are there (None: not yet)."""
        message = waiting.message
        path, hop = message.path, message.hop
        if waiting.key is None:
            try:
                pad = self.keys.claim(path[hop - 1], message.link_key_id)
            except LinkKeyUsed:
                return self._fail(message, hop, "link_key_used")
            if pad is None:
                return None
            self.stats.consumed_bits[path[hop - 1]] += 8 * len(pad)
            if len(pad) != len(message.ciphertext):
                return self._fail(message, hop, "size_mismatch")
            waiting.key = xor(message.ciphertext, pad)
            waiting.deadline = now + self.hold_timeout_s
        if hop == len(path) - 1:  # the target
            self.keys.deposit(path[0], message.relay_id, waiting.key)
            self.stats.counts["stored"] += 1
            ack = RelayAck(message.relay_id, path, hop - 1, True)
            return [Event("relay_key_stored", {"relay_id": message.relay_id, "peer": path[0],
                                               "bits": 8 * len(waiting.key),
                                               "hops": len(path) - 1}),
                    Send(path[hop - 1], seal(self._secrets[path[hop - 1]], ack))]
        taken = self.keys.take(path[hop + 1], len(waiting.key))
        if taken is None:
            return None
        link_key_id, pad = taken
        self.stats.consumed_bits[path[hop + 1]] += 8 * len(pad)
        self.stats.counts["forwarded"] += 1
        return self._forward(RelayForward(message.relay_id, path, hop + 1, link_key_id,
                                          xor(waiting.key, pad)))

    def _forward(self, forward: RelayForward) -> list[Action]:
        peer = forward.path[forward.hop]
        return [Event("relay_step", {"relay_id": forward.relay_id, "hop": forward.hop,
                                     "to": peer, "link_key_id": forward.link_key_id,
                                     "bits": 8 * len(forward.ciphertext)}),
                Send(peer, seal(self._secrets[peer], forward))]

    def _fail(self, message: RelayForward, hop: int, reason: str) -> list[Action]:
        """Give up ``message`` here: a failed ack back towards the origin."""
        self.stats.failures[reason] += 1
        back = message.path[hop - 1]
        ack = RelayAck(message.relay_id, message.path, hop - 1, False, reason)
        return [Event("relay_failed", {"relay_id": message.relay_id, "hop": hop,
                                       "reason": reason}),
                Send(back, seal(self._secrets[back], ack))]
