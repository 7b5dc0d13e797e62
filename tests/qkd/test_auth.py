"""Wegman-Carter authenticator: tampering, replay, reordering, truncation, key accounting."""

from __future__ import annotations

import pytest

from nodes.qkd.auth import (
    HEADER_BYTES,
    KEY_BITS_PER_MESSAGE,
    Authenticator,
    AuthError,
    KeyPoolExhausted,
)

PSK = bytes(range(32))


def pair(**kw):
    return Authenticator("initiator", PSK, **kw), Authenticator("responder", PSK, **kw)


def test_round_trip_both_directions_and_key_accounting():
    a, b = pair()
    for i in range(5):
        assert b.open(a.seal(b"a->b %d" % i)) == b"a->b %d" % i
        assert a.open(b.seal(b"b->a %d" % i)) == b"b->a %d" % i
    assert a.key_bits_used == b.key_bits_used == 10 * KEY_BITS_PER_MESSAGE
    assert a.outbound.keys_consumed == 5 and a.inbound.keys_consumed == 5
    assert a.rejected_total == b.rejected_total == 0


def test_modified_frames_rejected_and_counted():
    a, b = pair()
    frame = bytearray(a.seal(b"parity reply"))
    for pos in (0, 8, HEADER_BYTES - 1, HEADER_BYTES, len(frame) - 1):  # seq, tag, payload
        tampered = bytearray(frame)
        tampered[pos] ^= 0x01
        with pytest.raises(AuthError):
            b.open(bytes(tampered))
    assert b.open(bytes(frame)) == b"parity reply"  # the genuine frame still verifies
    assert b.rejected_total == 5


def test_replay_rejected():
    a, b = pair()
    frame = a.seal(b"x")
    b.open(frame)
    with pytest.raises(AuthError) as err:
        b.open(frame)
    assert err.value.reason == "replayed" and b.rejected["replayed"] == 1


def test_reordered_frame_is_rejected_and_the_channel_continues():
    a, b = pair()
    first, second, third = a.seal(b"1"), a.seal(b"2"), a.seal(b"3")
    assert b.open(second) == b"2"  # first was delayed: its key is skipped, never reused
    with pytest.raises(AuthError) as err:
        b.open(first)
    assert err.value.reason == "replayed"
    assert b.open(third) == b"3"
    assert b.inbound.keys_consumed == 3  # the skipped key counts as used


def test_lost_frame_does_not_wedge_and_window_is_bounded():
    a, b = pair(max_skip=2)
    a.seal(b"lost")
    assert b.open(a.seal(b"next")) == b"next"
    frames = [a.seal(b"%d" % i) for i in range(4)]
    with pytest.raises(AuthError) as err:
        b.open(frames[3])  # 3 ahead of expected: outside the window
    assert err.value.reason == "out_of_window"


def test_truncated_frames():
    a, b = pair()
    frame = a.seal(b"payload")
    with pytest.raises(AuthError) as err:
        b.open(frame[:10])
    assert err.value.reason == "truncated"
    with pytest.raises(AuthError) as err:
        b.open(frame[:-1])
    assert err.value.reason == "bad_tag"
    assert b.open(frame) == b"payload"


def test_wrong_psk_or_role_rejected():
    a = Authenticator("initiator", PSK)
    stranger = Authenticator("responder", bytes(32))
    same_role = Authenticator("initiator", PSK)
    frame = a.seal(b"hello")
    for receiver in (stranger, same_role):
        with pytest.raises(AuthError):
            receiver.open(frame)


def test_pool_exhaustion_and_replenish():
    a, b = pair(bootstrap_keys=2)
    a.seal(b"1")
    a.seal(b"2")
    with pytest.raises(KeyPoolExhausted):
        a.seal(b"3")
    material = bytes(range(256)) * 2  # 512 bytes: 8 keys per direction
    a.replenish(material)
    b.replenish(material)
    frames = [a.seal(b"%d" % i) for i in range(3, 11)]
    b.inbound.consume_through(1)  # b never saw the first two
    assert [b.open(f) for f in frames] == [b"%d" % i for i in range(3, 11)]
    assert a.open(b.seal(b"back")) == b"back"  # reverse direction got its own half


def test_keys_never_reused():
    a, _ = pair(bootstrap_keys=50)
    seen = set()
    for _ in range(50):
        key = a.outbound.peek(a.outbound.next_index)
        assert key not in seen
        seen.add(key)
        a.seal(b"m")
