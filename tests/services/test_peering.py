"""KME-to-KME channel authentication: a changed, replayed, reordered or reflected frame fails."""

from __future__ import annotations

import os

import pytest

from nodes.services.kme.peering import (
    Ack,
    Discard,
    PeerAuthError,
    PeerSession,
    Release,
    allocator_of,
)


def pair(key: bytes | None = None) -> tuple[PeerSession, PeerSession]:
    key = key or os.urandom(32)
    d, a = PeerSession(key, "alice", "bob", True), PeerSession(key, "bob", "alice", False)
    d.on_hello(a.hello())
    a.on_hello(d.hello())
    return d, a


def test_round_trip_both_ways() -> None:
    d, a = pair()
    message = Release(1, ["x", "y"], "sae-a", "sae-b", 256)
    assert a.open(d.seal(message)) == message
    assert d.open(a.seal(Ack(1))) == Ack(1)
    assert allocator_of("bob", "alice") == "alice"


def test_tampered_replayed_reordered_reflected_or_foreign_frames_fail() -> None:
    d, a = pair()
    frame = d.seal(Discard(["k"]))
    bad = bytearray(frame)
    bad[10] ^= 1
    with pytest.raises(PeerAuthError):
        a.open(bytes(bad))
    a.open(frame)
    with pytest.raises(PeerAuthError):  # replay
        a.open(frame)
    first, second = d.seal(Discard(["1"])), d.seal(Discard(["2"]))
    with pytest.raises(PeerAuthError):  # reordered
        a.open(second)
    with pytest.raises(PeerAuthError):  # reflected back to its sender
        d.open(first)
    other_d, _ = pair()
    with pytest.raises(PeerAuthError):  # another session (other nonces, other key)
        a.open(other_d.seal(Discard(["k"])))
    with pytest.raises(PeerAuthError):
        a.open(b"short")
    with pytest.raises(PeerAuthError):
        PeerSession(b"k", "a", "b", True).on_hello(b"not 16 bytes")


def test_same_link_key_new_nonces_new_session_key() -> None:
    key = os.urandom(32)
    d1, a1 = pair(key)
    d2, a2 = pair(key)
    with pytest.raises(PeerAuthError):  # a recorded session does not replay into a new one
        a2.open(d1.seal(Discard(["k"])))
