"""Hybrid header codec: exact wire layout, round trips, MAC, and strict decoding under fuzzing
(every input is a header, a ``MalformedHeader`` or a ``HeaderAuthenticationError``)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.errors import MalformedMessage, PeerAuthenticationError
from nodes.net.header import (
    MAC_LEN,
    HeaderAuthenticationError,
    HeaderCodec,
    HybridHeader,
    MalformedHeader,
    PayloadDescriptor,
    PolarisationReference,
    _build,
    parse,
)

KEY = bytes(range(32))
CODEC = HeaderCodec(KEY)
H = HybridHeader("alice", "bob", flow=7, seq=42, ttl=8, timestamp_ns=123_456_789,
                 payload=PayloadDescriptor(kind=2, flags=0, qubits=1, payload_id=99),
                 pol_ref=PolarisationReference(0.0, 1.0, 0.0))


def tlvs(data: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 2
    while off < len(data):
        t, n = struct.unpack_from(">BH", data, off)
        out.append((t, data[off + 3: off + 3 + n]))
        off += 3 + n
    return out


def test_wire_layout_is_as_documented():
    data = CODEC.encode(H)
    assert data[:2] == b"QH"
    assert tlvs(data)[:-1] == [
        (1, b"\x01"), (2, b"alice"), (3, b"bob"), (4, (7).to_bytes(4, "big")),
        (5, (42).to_bytes(8, "big")), (6, b"\x08"), (7, (123_456_789).to_bytes(8, "big")),
        (8, bytes([2, 0, 0, 1]) + (99).to_bytes(8, "big")), (9, struct.pack(">fff", 0, 1, 0))]
    import hmac
    mac_t, mac = tlvs(data)[-1]
    assert mac_t == 0xFF and len(mac) == MAC_LEN
    assert mac == hmac.new(KEY, data[:-MAC_LEN], "sha256").digest()[:MAC_LEN]
    assert len(data) == 2 + 9 * 3 + 1 + 5 + 3 + 4 + 8 + 1 + 8 + 12 + 12 + 3 + 16


def test_round_trip_and_wrong_key():
    assert CODEC.decode(CODEC.encode(H)) == H
    with pytest.raises(HeaderAuthenticationError):
        HeaderCodec(b"k" * 32).decode(CODEC.encode(H))
    assert issubclass(HeaderAuthenticationError, PeerAuthenticationError)
    assert issubclass(MalformedHeader, MalformedMessage)


def _reframe(items: list[tuple[int, bytes]], codec: HeaderCodec = CODEC) -> bytes:
    """Re-assemble TLVs (the last being the MAC) with a valid MAC over the result."""
    body = b"QH" + b"".join(struct.pack(">BH", t, len(v)) + v for t, v in items[:-1])
    body += struct.pack(">BH", 0xFF, MAC_LEN)
    return body + codec._tag(body)


@pytest.mark.parametrize("edit, message", [
    (lambda x: x[1:], "first TLV must be the version"),
    (lambda x: [(1, b"\x02")] + x[1:], "unsupported header version"),
    (lambda x: x[:3] + [x[2]] + x[3:], "duplicate TLV type 3"),
    (lambda x: x[:3] + [(0x42, b"?")] + x[3:], "unknown TLV type 66"),
    (lambda x: [x[0]] + x[2:], r"missing TLV types \[2\]"),
    (lambda x: x[:5] + [(6, b"\x01\x02")] + x[6:], "must be 1 bytes"),
    (lambda x: [x[0], (2, b"\xff\xfe")] + x[2:], "not UTF-8"),
    (lambda x: [x[0], (2, b"")] + x[2:], "1..64 bytes"),
    (lambda x: [x[0], (2, b"a" * 65)] + x[2:], "1..64 bytes"),
    (lambda x: x[:8] + [(9, struct.pack(">fff", float("nan"), 0, 0))] + x[9:], "finite"),
    (lambda x: x[:8] + [(9, struct.pack(">fff", 1, 1, 0))] + x[9:], r"\|S\| <= 1"),
    (lambda x: x[:4] + [(5, b"\xff" * 8)] + x[5:], "below 2"),
])
def test_malformed_tlvs_are_rejected_even_with_a_valid_mac(edit, message):
    with pytest.raises(MalformedHeader, match=message):
        CODEC.decode(_reframe(edit(tlvs(CODEC.encode(H)))))


def test_extensions_are_skipped_and_authenticated():
    items = tlvs(CODEC.encode(H))
    data = _reframe(items[:3] + [(0x90, b"future")] + items[3:])
    assert CODEC.decode(data) == H
    with pytest.raises(HeaderAuthenticationError):
        CODEC.decode(data.replace(b"future", b"futurf"))


@pytest.mark.parametrize("data, message", [
    (b"", "bad magic"), (b"XH\x01\x00\x01\x01", "bad magic"), (b"QH\x01\x00", "truncated TLV"),
    (b"QH\x01\x00\x05\x01", "runs past the end"), (b"QH" + b"\x00" * 600, "exceeds 512"),
])
def test_structural_garbage(data, message):
    with pytest.raises(MalformedHeader, match=message):
        CODEC.decode(data)


def test_trailing_bytes_and_missing_mac():
    data = CODEC.encode(H)
    with pytest.raises(MalformedHeader, match="MAC must be the last"):
        CODEC.decode(data + b"\x00")
    with pytest.raises(MalformedHeader, match="MAC must be the last"):
        CODEC.decode(data[: -MAC_LEN - 3])
    with pytest.raises(MalformedHeader):
        CODEC.decode("not bytes")  # type: ignore[arg-type]


def test_encode_refuses_what_it_could_not_decode():
    for bad in (msgspec_replace(H, src=""), msgspec_replace(H, flow=2**32),
                msgspec_replace(H, seq=2**63), msgspec_replace(H, ttl=-1),
                msgspec_replace(H, pol_ref=PolarisationReference(1.0, 1.0, 0.0))):
        with pytest.raises(ValueError):
            CODEC.encode(bad)
    with pytest.raises(ValueError, match="16 bytes"):
        HeaderCodec(b"short")


def msgspec_replace(h: HybridHeader, **changes) -> HybridHeader:
    import msgspec

    return msgspec.structs.replace(h, **changes)


names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1,
                max_size=16).filter(lambda s: len(s.encode()) <= 64)
headers = st.builds(
    HybridHeader, src=names, dst=names, flow=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 2**63 - 1), ttl=st.integers(0, 255),
    timestamp_ns=st.integers(0, 2**63 - 1),
    payload=st.builds(PayloadDescriptor, kind=st.integers(0, 255), flags=st.integers(0, 255),
                      qubits=st.integers(0, 65535), payload_id=st.integers(0, 2**63 - 1)),
    pol_ref=st.sampled_from([PolarisationReference(), PolarisationReference(0.0, 0.0, -1.0),
                             PolarisationReference(0.6, 0.0, 0.8), PolarisationReference(0, 0, 0)]))


OTHER = HeaderCodec(b"another link's key, longer than a SHA-256 block: " * 2)


@settings(max_examples=300, deadline=None)
@given(headers, st.integers(0, 255))
def test_any_valid_header_round_trips(h, ttl):
    pol = h.pol_ref
    f32 = PolarisationReference(*struct.unpack(">fff", struct.pack(">fff", pol.s1, pol.s2,
                                                                    pol.s3)))
    data = CODEC.encode(h)
    assert CODEC.decode(data) == msgspec_replace(h, pol_ref=f32)
    assert _build(parse(data)) == CODEC.decode(data)  # the generic walk agrees
    # a router's re-MAC with a new TTL: the bytes of encoding the changed header
    assert OTHER.retag(data, ttl) == OTHER.encode(msgspec_replace(h, ttl=ttl))


def test_tags_are_hmac_sha256_for_any_key_length_and_extensions_are_not_retagged():
    import hmac

    for key in (KEY, b"k" * 64, b"k" * 65, b"k" * 200):
        assert HeaderCodec(key)._tag(b"QH data") == \
            hmac.new(key, b"QH data", "sha256").digest()[:MAC_LEN]
    items = tlvs(CODEC.encode(H))
    extended = _reframe(items[:3] + [(0x90, b"future")] + items[3:])
    assert CODEC.retag(extended, 3) is None  # not encode's layout: the caller encodes


def _typed(data: bytes) -> HybridHeader | None:
    try:
        return CODEC.decode(data)
    except (MalformedHeader, HeaderAuthenticationError):
        return None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=700))
def test_random_bytes_never_raise_another_type(data):
    assert _typed(data) is None  # a random MAC never verifies
    _typed(b"QH\x01\x00\x01\x01" + data)


@settings(max_examples=500, deadline=None)
@given(headers, st.data())
def test_mutated_headers_are_rejected_with_a_typed_error(h, data):
    wire = bytearray(CODEC.encode(h))
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    at = data.draw(st.integers(0, len(wire) - 1))
    if kind == "flip":
        wire[at] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del wire[at:]
    elif kind == "insert":
        wire[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    else:
        del wire[at: at + data.draw(st.integers(1, 8))]
    assert _typed(bytes(wire)) is None  # any change to an authenticated byte is caught
    assert parse(CODEC.encode(h))  # the original stays valid
