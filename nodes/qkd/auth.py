"""Wegman-Carter authentication of post-processing messages with one-time Poly1305 keys.

Each message is tagged with Poly1305 (``cryptography``) keyed (r, s): r is the direction's
secret hash key, drawn once from the pre-shared material and reused, and s a fresh 16-byte
one-time pad drawn from a key pool and never used again. That is the Wegman-Carter
construction (Wegman & Carter, JCSS 22 (1981)): the tag h_r(m) + s mod 2^128 reveals nothing
about r because s is used once, so r may be reused; forgery probability <= 8 ceil(L / 16) /
2^106 per attempt for an L-byte message (Bernstein 2005, thm 3.3). So a message costs 128
bits of key. There is one pool per direction so both ends consume pads in the same order: the
message with sequence number ``s`` in a direction uses that direction's ``s``-th pad.

Pools are bootstrapped from the pre-shared secret by role (SHAKE-256 expansion, so bootstrap
keys are only computationally secure) and replenished with produced QKD key bytes via
``replenish`` (information-theoretically secure). Frame layout (sans-I/O, bytes in/bytes out):
``seq (8 bytes, big endian) || tag (16 bytes) || payload``; the tag covers ``seq || payload``.
A receiver accepts ``seq`` >= the next expected one (up to ``max_skip`` ahead, so one lost or
tampered message does not wedge the channel; skipped keys are discarded, never reused) and
rejects modified, truncated, replayed and late (reordered) frames, counting each reason.
"""

from __future__ import annotations

import hashlib
import struct
from collections import Counter
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

HASH_KEY_BYTES = 16  # Poly1305 r, one per direction, reused
KEY_BYTES = 16  # one-time pad s per message: the pool's unit
TAG_BYTES = 16
KEY_BITS_PER_MESSAGE = 8 * KEY_BYTES
_SEQ = struct.Struct(">Q")
HEADER_BYTES = _SEQ.size + TAG_BYTES

Role = Literal["initiator", "responder"]
_DIRECTIONS = ("initiator->responder", "responder->initiator")


class AuthError(Exception):
    """A received frame was rejected (remote fault or tampering); ``reason`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class KeyPoolExhausted(Exception):
    """No one-time key left in a pool (local condition: replenish before sending more)."""


class KeyPool:
    """An ordered stream of one-time keys for one direction; position ``i`` is key ``i``."""

    def __init__(self, initial: bytes = b"") -> None:
        self._buffer = bytearray(initial)
        self._offset = 0  # bytes of _buffer before the next unused key
        self.next_index = 0  # index of the next unused key
        self.keys_consumed = 0

    def add(self, material: bytes) -> None:
        self._buffer += material

    @property
    def keys_available(self) -> int:
        return (len(self._buffer) - self._offset) // KEY_BYTES

    def peek(self, index: int) -> bytes:
        """Key ``index`` (>= next_index) without consuming it."""
        ahead = index - self.next_index
        if ahead < 0:
            raise ValueError(f"key {index} was already consumed")
        start = self._offset + ahead * KEY_BYTES
        if start + KEY_BYTES > len(self._buffer):
            raise KeyPoolExhausted(f"key {index} not yet in the pool")
        return bytes(self._buffer[start : start + KEY_BYTES])

    def consume_through(self, index: int) -> int:
        """Discard every key up to and including ``index``; return how many were dropped."""
        count = index - self.next_index + 1
        if count <= 0:
            return 0
        self._offset += count * KEY_BYTES
        self.next_index = index + 1
        self.keys_consumed += count
        if self._offset > 1 << 16:  # compact now and then; keys are never handed out twice
            del self._buffer[: self._offset]
            self._offset = 0
        return count


def bootstrap_material(psk: bytes, direction: str, nbytes: int) -> bytes:
    """Expand the pre-shared secret into ``nbytes`` of key material for one direction."""
    if len(psk) < 16:
        raise ValueError("pre-shared secret must have at least 16 bytes")
    label = b"qnet-wegman-carter\x00" + direction.encode() + b"\x00"
    return hashlib.shake_256(label + psk).digest(nbytes)


class Authenticator:
    """One end of an authenticated channel: ``seal`` outgoing and ``open`` incoming frames.

    ``role`` decides which pool is outbound; the peer uses the other role. Counters:
    ``rejected`` (by reason), ``messages_sealed``, ``messages_opened``, ``key_bits_used``.
    """

    def __init__(
        self,
        role: Role,
        psk: bytes,
        bootstrap_keys: int = 64,
        max_skip: int = 16,
    ) -> None:
        if role not in ("initiator", "responder"):
            raise ValueError(f"role must be 'initiator' or 'responder', got {role!r}")
        self.role = role
        self.max_skip = max_skip
        material = {
            d: bootstrap_material(psk, d, HASH_KEY_BYTES + bootstrap_keys * KEY_BYTES)
            for d in _DIRECTIONS
        }
        out_dir, in_dir = _DIRECTIONS if role == "initiator" else _DIRECTIONS[::-1]
        self._out_hash_key = material[out_dir][:HASH_KEY_BYTES]
        self._in_hash_key = material[in_dir][:HASH_KEY_BYTES]
        self.outbound = KeyPool(material[out_dir][HASH_KEY_BYTES:])
        self.inbound = KeyPool(material[in_dir][HASH_KEY_BYTES:])
        self.rejected: Counter[str] = Counter()
        self.messages_sealed = 0
        self.messages_opened = 0

    def replenish(self, material: bytes) -> None:
        """Add produced key bytes; both ends must call this with the same bytes, in order.

        The first half (whole keys) feeds initiator->responder, the second half the reverse.
        """
        half = (len(material) // (2 * KEY_BYTES)) * KEY_BYTES
        first, second = material[:half], material[half : 2 * half]
        if self.role == "initiator":
            self.outbound.add(first)
            self.inbound.add(second)
        else:
            self.inbound.add(first)
            self.outbound.add(second)

    @property
    def key_bits_used(self) -> int:
        """Key bits consumed by this end in both directions (sent + received/skipped)."""
        return KEY_BITS_PER_MESSAGE * (self.outbound.keys_consumed + self.inbound.keys_consumed)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def seal(self, payload: bytes) -> bytes:
        """Frame ``payload`` with the next sequence number and its one-time Poly1305 tag."""
        seq = self.outbound.next_index
        key = self._out_hash_key + self.outbound.peek(seq)  # raises before consuming anything
        header = _SEQ.pack(seq)
        tag = Poly1305.generate_tag(key, header + payload)
        self.outbound.consume_through(seq)
        self.messages_sealed += 1
        return header + tag + payload

    def open(self, frame: bytes) -> bytes:
        """Verify ``frame`` and return its payload, or raise ``AuthError`` (counted)."""
        if len(frame) < HEADER_BYTES:
            self._reject("truncated", f"frame of {len(frame)} bytes is shorter than the header")
        (seq,) = _SEQ.unpack_from(frame)
        tag = frame[_SEQ.size : HEADER_BYTES]
        payload = frame[HEADER_BYTES:]
        expected = self.inbound.next_index
        if seq < expected:
            self._reject("replayed", f"sequence {seq} already used (next is {expected})")
        if seq - expected > self.max_skip:
            self._reject("out_of_window", f"sequence {seq} too far ahead of {expected}")
        try:
            key = self._in_hash_key + self.inbound.peek(seq)
        except KeyPoolExhausted:
            self._reject("no_key", f"no key for sequence {seq} yet")
        try:
            Poly1305.verify_tag(key, frame[: _SEQ.size] + payload, tag)
        except InvalidSignature:
            self._reject("bad_tag", f"tag of sequence {seq} does not verify")
        self.inbound.consume_through(seq)
        self.messages_opened += 1
        return payload

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        raise AuthError(reason, detail)
