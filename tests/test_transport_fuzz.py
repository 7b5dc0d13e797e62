"""Fuzzing the channel hello and its framing: whatever a stranger sends, the acceptor either
gets a verified hello or a ``RemoteProtocolError`` / framing error, never anything else.

Runs in a few seconds (example counts below); the loopback tests are in test_transport.py.
"""

from __future__ import annotations

import os

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.wire import HEADER, FrameTooLarge, TruncatedFrame, frame
from nodes.channel_hello import (
    HELLO_MAX_BYTES,
    BadHello,
    HelloGate,
    ReplayedHello,
    SpoofedHello,
    make_hello,
)
from nodes.errors import RemoteProtocolError
from nodes.transport import read_hello

KEY = os.urandom(32)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)
hello_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["channel_hello", "other"])},
    optional={k: msgpack_values | st.text(max_size=10) | st.binary(min_size=16, max_size=32)
              for k in ("node", "to", "channel", "nonce", "mac", "extra")},
)


def gate() -> HelloGate:
    return HelloGate("run", "bob", "alice", KEY)


def check_only_remote_errors(payload: bytes) -> None:
    try:
        gate().check(payload)
    except (BadHello, SpoofedHello):
        return
    raise AssertionError("a forged payload passed the gate")


@FUZZ
@given(st.binary(max_size=HELLO_MAX_BYTES))
def test_random_bytes_never_pass_and_raise_only_remote_errors(payload):
    check_only_remote_errors(payload)


@FUZZ
@given(hello_like)
def test_hello_shaped_values_never_pass(value):
    check_only_remote_errors(msgspec.msgpack.encode(value))


@FUZZ
@given(st.data())
def test_any_change_to_a_valid_hello_is_rejected(data):
    hello = bytearray(make_hello(KEY, "run", "alice", "bob", "qkd/alice-bob"))
    position = data.draw(st.integers(0, len(hello) - 1))
    bit = data.draw(st.integers(0, 7))
    hello[position] ^= 1 << bit
    check_only_remote_errors(bytes(hello))


def test_deep_nesting_is_a_bad_hello():
    for depth in (10, 1000, 100_000):
        with pytest.raises(BadHello):
            gate().check(b"\x91" * depth + b"\xc0")


def test_valid_hello_passes_once():
    g = gate()
    hello = make_hello(KEY, "run", "alice", "bob", "x")
    assert g.check(hello).channel == "x"
    with pytest.raises(ReplayedHello):
        g.check(hello)
    assert isinstance(ReplayedHello("r"), RemoteProtocolError)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


async def feed_and_read(chunks: list[bytes], close: bool):
    send, receive = trio.testing.memory_stream_pair()
    for chunk in chunks:
        await send.send_all(chunk)
    if close:
        await send.aclose()
    with trio.move_on_after(1.0):  # nothing more arrives (mock clock: no real wait)
        return await read_hello(receive)
    return "waiting"


@FUZZ
@given(st.binary(max_size=3 * HELLO_MAX_BYTES), st.lists(st.integers(0, 10_000), max_size=6),
       st.booleans())
def test_read_hello_on_any_bytes_and_any_split(data, cuts, close):
    """Either the first frame and exactly the bytes after it, or a bounded framing error."""
    try:
        got = trio.run(feed_and_read, split(data, cuts), close,
                       clock=trio.testing.MockClock(autojump_threshold=0))
    except FrameTooLarge as exc:
        assert HEADER.unpack_from(data)[0] == exc.length > HELLO_MAX_BYTES
        return
    except TruncatedFrame:
        assert close and 0 < len(data)
        length = HEADER.unpack_from(data)[0] if len(data) >= HEADER.size else None
        assert length is None or len(data) < HEADER.size + length
        return
    if got is None:
        assert close and data == b""
    elif got == "waiting":
        assert not close
    else:
        payload, rest = got
        assert frame(payload) + rest == data
        assert len(payload) <= HELLO_MAX_BYTES


@FUZZ
@given(st.binary(max_size=200), st.lists(st.integers(0, 10_000), max_size=4))
def test_hello_then_anything_splits_at_the_hello(tail, cuts):
    hello = make_hello(KEY, "run", "alice", "bob", "x")
    payload, rest = trio.run(feed_and_read, split(frame(hello) + tail, cuts), True)
    assert payload == hello and rest == tail
