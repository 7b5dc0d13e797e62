"""Hybrid-packet header: TLVs over UDP with a truncated HMAC-SHA256 under the link's key.

The classical half of a Q-Chip-style hybrid packet (the quantum payload travels the link's
quantum channel). Decoding is strict: any input that is not exactly a valid header raises
``MalformedHeader``; a valid one under the wrong key raises ``HeaderAuthenticationError``.
Wire format in docs/protocol.md ("Network layer"); dissector in tools/wireshark/.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from operator import itemgetter
from typing import Annotated

import msgspec

from nodes.errors import MalformedMessage, PeerAuthenticationError

MAGIC = b"QH"
VERSION = 1
MAC_LEN = 16
MAX_HEADER = 512
MAX_NAME = 64
MIN_KEY = 16

T_VERSION, T_SRC, T_DST, T_FLOW, T_SEQ, T_TTL, T_TIME, T_PAYLOAD, T_POL = range(1, 10)
T_MAC = 0xFF
EXTENSION = 0x80  # types 0x80..0xFE: optional, skipped by a receiver that does not know them

PAYLOAD_NONE, PAYLOAD_QUBIT, PAYLOAD_EPR_HALF = 0, 1, 2
FLAG_PAYLOAD_LOST = 0x01
FLAG_PAYLOAD_LATE = 0x02  # with LOST: a router decided after its switch budget

_TL = struct.Struct(">BH")
_U32, _U64 = struct.Struct(">I"), struct.Struct(">Q")
_PAYLOAD = struct.Struct(">BBHQ")
_POL = struct.Struct(">fff")
_FIXED = {T_VERSION: 1, T_FLOW: 4, T_SEQ: 8, T_TTL: 1, T_TIME: 8, T_PAYLOAD: _PAYLOAD.size,
          T_POL: _POL.size, T_MAC: MAC_LEN}
# What ``encode`` writes, in one struct each side of the names: magic and version; then
# flow .. polarisation and the MAC's type and length (the canonical layout, decoded without
# the generic TLV walk; anything else, e.g. with extensions, takes the walk).
_HEAD = struct.Struct(">2sBHB")
_CANONICAL_HEAD = _HEAD.pack(MAGIC, T_VERSION, 1, VERSION)
_TAIL = struct.Struct(">BHI BHQ BHB BHQ BHBBHQ BHfff BH")
_TAIL_TL = itemgetter(0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 18, 19, 23, 24)
_CANONICAL_TL = (T_FLOW, 4, T_SEQ, 8, T_TTL, 1, T_TIME, 8, T_PAYLOAD, _PAYLOAD.size,
                 T_POL, _POL.size, T_MAC, MAC_LEN)
_TTL_IN_TAIL = 7 + 11 + 3  # offset of the TTL value in the tail
_SHA256_BLOCK = 64

U8 = Annotated[int, msgspec.Meta(ge=0, le=0xFF)]
U16 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class MalformedHeader(MalformedMessage):
    """Bytes that are not a hybrid header of this version: the datagram is dropped."""

    scope = "frame"


class HeaderAuthenticationError(PeerAuthenticationError):
    """A well-formed header whose MAC does not verify under the link's key: dropped."""


class PayloadDescriptor(msgspec.Struct, frozen=True):
    """What rides on the quantum channel: its kind, flags (lost upstream), size, daemon id."""

    kind: U8 = PAYLOAD_NONE
    flags: U8 = 0
    qubits: U16 = 0
    payload_id: U64 = 0


class PolarisationReference(msgspec.Struct, frozen=True):
    """Stokes vector (S1, S2, S3) of the reference light sent as prepared, |S| <= 1."""

    s1: float = 1.0
    s2: float = 0.0
    s3: float = 0.0


class HybridHeader(msgspec.Struct, frozen=True):
    """The routing header of one hybrid packet; ``timestamp_ns`` is emulated time."""

    src: str
    dst: str
    flow: U32
    seq: U64
    ttl: U8
    timestamp_ns: U64
    payload: PayloadDescriptor = PayloadDescriptor()
    pol_ref: PolarisationReference = PolarisationReference()
    version: U8 = VERSION


def _name(value: str, what: str) -> bytes:
    raw = value.encode()
    if not 1 <= len(raw) <= MAX_NAME:
        raise ValueError(f"{what} must be 1..{MAX_NAME} bytes of UTF-8")
    return raw


class HeaderCodec:
    """Encodes and decodes headers MACed with one link's key (at least 16 bytes)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY:
            raise ValueError(f"link key must have at least {MIN_KEY} bytes")
        # HMAC-SHA256 (RFC 2104) from the two keyed hash states, copied per tag: about twice
        # as fast as copying an ``hmac`` object, and the same tags
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(k ^ 0x36 for k in key))
        self._outer = hashlib.sha256(bytes(k ^ 0x5C for k in key))

    def _tag(self, data: bytes | memoryview) -> bytes:
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:MAC_LEN]

    def encode(self, h: HybridHeader) -> bytes:
        """The datagram for ``h``: magic, TLVs in type order, then the MAC TLV."""
        pol = h.pol_ref
        if not all(math.isfinite(s) for s in (pol.s1, pol.s2, pol.s3)) or \
                pol.s1 ** 2 + pol.s2 ** 2 + pol.s3 ** 2 > 1.0 + 1e-6:
            raise ValueError("polarisation reference must be finite with |S| <= 1")
        p = h.payload
        if max(h.seq, h.timestamp_ns, p.payload_id) >= 2**63:
            raise ValueError("seq, timestamp_ns and payload_id must be below 2**63")
        try:
            body = self._body(h, p, pol)
        except struct.error as exc:
            raise ValueError(f"header field out of range: {exc}") from None
        return body + self._tag(body)

    @staticmethod
    def _body(h: HybridHeader, p: PayloadDescriptor, pol: PolarisationReference) -> bytes:
        src, dst = _name(h.src, "src"), _name(h.dst, "dst")
        return b"".join((
            _HEAD.pack(MAGIC, T_VERSION, 1, h.version), _TL.pack(T_SRC, len(src)), src,
            _TL.pack(T_DST, len(dst)), dst,
            _TAIL.pack(T_FLOW, 4, h.flow, T_SEQ, 8, h.seq, T_TTL, 1, h.ttl,
                       T_TIME, 8, h.timestamp_ns,
                       T_PAYLOAD, _PAYLOAD.size, p.kind, p.flags, p.qubits, p.payload_id,
                       T_POL, _POL.size, pol.s1, pol.s2, pol.s3, T_MAC, MAC_LEN)))

    def decode(self, data: bytes) -> HybridHeader:
        """The header in ``data`` if it is well formed and its MAC verifies; else a typed error."""
        tail_at = _canonical(data)
        if tail_at is None:
            fields = parse(data)
        mac_at = len(data) - MAC_LEN
        if not hmac.compare_digest(self._tag(memoryview(data)[:mac_at]), data[mac_at:]):
            raise HeaderAuthenticationError("hybrid header MAC does not verify")
        if tail_at is None:
            return _build(fields)
        (_, _, flow, _, _, seq, _, _, ttl, _, _, timestamp, _, _, kind, flags, qubits,
         payload_id, _, _, s1, s2, s3, _, _) = _TAIL.unpack_from(data, tail_at)
        src_len = data[8]  # < 256: a canonical header is at most 512 bytes
        return _header(VERSION, data[9:9 + src_len], data[12 + src_len:tail_at], flow, seq,
                       ttl, timestamp, kind, flags, qubits, payload_id, s1, s2, s3)

    def retag(self, data: bytes, ttl: int) -> bytes | None:
        """``data``, a header datagram that decoded (under any link's key), with ``ttl`` and
        this codec's MAC: the bytes ``encode`` gives for that header with ``ttl`` — or None
        when ``data`` is not in ``encode``'s layout (then encode the header)."""
        tail_at = _canonical(data)
        if tail_at is None:
            return None
        at = tail_at + _TTL_IN_TAIL
        body = b"".join((data[:at], bytes((ttl,)), data[at + 1:len(data) - MAC_LEN]))
        return body + self._tag(body)


def _canonical(data: bytes) -> int | None:
    """Where the fixed tail (flow .. MAC) of ``data`` starts if ``data`` is laid out as
    ``encode`` writes it (which the generic ``parse`` accepts), else None."""
    if type(data) is not bytes:
        return None
    n = len(data)
    if n > MAX_HEADER or n < 12 + _TAIL.size + MAC_LEN or data[:6] != _CANONICAL_HEAD \
            or data[6] != T_SRC or data[7]:
        return None
    dst_at = 9 + data[8]
    if dst_at + 3 > n or data[dst_at] != T_DST or data[dst_at + 1]:
        return None
    tail_at = dst_at + 3 + data[dst_at + 2]
    if tail_at + _TAIL.size + MAC_LEN != n \
            or _TAIL_TL(_TAIL.unpack_from(data, tail_at)) != _CANONICAL_TL:
        return None
    return tail_at


def parse(data: bytes) -> dict[int, bytes]:
    """The TLVs of a structurally valid header (MAC not checked), or ``MalformedHeader``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedHeader(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_HEADER:
        raise MalformedHeader(f"header of {len(data)} bytes exceeds {MAX_HEADER}")
    if data[:2] != MAGIC:
        raise MalformedHeader("not a hybrid header (bad magic)")
    fields: dict[int, bytes] = {}
    offset = 2
    while offset < len(data):
        if offset + _TL.size > len(data):
            raise MalformedHeader(f"truncated TLV at offset {offset}")
        t, length = _TL.unpack_from(data, offset)
        value = data[offset + 3: offset + 3 + length]
        if len(value) != length:
            raise MalformedHeader(f"TLV type {t} at offset {offset} runs past the end")
        if not fields and t != T_VERSION:
            raise MalformedHeader("the first TLV must be the version")
        if t == T_VERSION and (length != 1 or value[0] != VERSION):
            raise MalformedHeader(f"unsupported header version {value.hex()}")
        if t in fields:
            raise MalformedHeader(f"duplicate TLV type {t}")
        if t not in _FIXED and t not in (T_SRC, T_DST) and not EXTENSION <= t < T_MAC:
            raise MalformedHeader(f"unknown TLV type {t}")
        if t in _FIXED and length != _FIXED[t]:
            raise MalformedHeader(f"TLV type {t} must be {_FIXED[t]} bytes, got {length}")
        fields[t] = value
        offset += 3 + length
        if t == T_MAC:
            break
    if T_MAC not in fields or offset != len(data):
        raise MalformedHeader("the MAC must be the last TLV")
    missing = set(range(T_VERSION, T_POL + 1)) - set(fields)
    if missing:
        raise MalformedHeader(f"missing TLV types {sorted(missing)}")
    return fields


def _text(raw: bytes, what: str) -> str:
    if not 1 <= len(raw) <= MAX_NAME:
        raise MalformedHeader(f"{what} must be 1..{MAX_NAME} bytes")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise MalformedHeader(f"{what} is not UTF-8") from None


def _build(f: dict[int, bytes]) -> HybridHeader:
    return _header(f[T_VERSION][0], f[T_SRC], f[T_DST], _U32.unpack(f[T_FLOW])[0],
                   _U64.unpack(f[T_SEQ])[0], f[T_TTL][0], _U64.unpack(f[T_TIME])[0],
                   *_PAYLOAD.unpack(f[T_PAYLOAD]), *_POL.unpack(f[T_POL]))


def _header(version: int, src: bytes, dst: bytes, flow: int, seq: int, ttl: int,
            timestamp: int, kind: int, flags: int, qubits: int, payload_id: int, s1: float,
            s2: float, s3: float) -> HybridHeader:
    """The header of decoded field values, or ``MalformedHeader`` for a value out of range."""
    if not (math.isfinite(s1) and math.isfinite(s2) and math.isfinite(s3)) \
            or s1 * s1 + s2 * s2 + s3 * s3 > 1.0001:
        raise MalformedHeader("polarisation reference must be finite with |S| <= 1")
    if seq >= 2**63 or timestamp >= 2**63:
        raise MalformedHeader("seq and timestamp must be below 2**63")
    if payload_id >= 2**63:
        raise MalformedHeader("payload id must be below 2**63")
    return HybridHeader(_text(src, "src"), _text(dst, "dst"), flow, seq, ttl, timestamp,
                        PayloadDescriptor(kind, flags, qubits, payload_id),
                        PolarisationReference(s1, s2, s3), version)
