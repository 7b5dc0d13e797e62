"""The authenticated link delivers every message once, in order, despite tampering."""

from __future__ import annotations

import numpy as np
import pytest

from nodes.qkd.auth import Authenticator
from nodes.qkd.auth_channel import AuthenticatedLink, LinkFailed

PSK = b"pre-shared secret of the test run"


def pair() -> tuple[AuthenticatedLink, AuthenticatedLink]:
    return (AuthenticatedLink(Authenticator("initiator", PSK, bootstrap_keys=4096)),
            AuthenticatedLink(Authenticator("responder", PSK, bootstrap_keys=4096)))


def flip_bit(frame: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(frame)
    position = int(rng.integers(len(data)))
    data[position] ^= 1 << int(rng.integers(8))
    return bytes(data)


def test_clean_exchange_in_order() -> None:
    a, b = pair()
    got = []
    for i in range(20):
        bodies, replies = b.receive(a.send(f"m{i}".encode()), now=0.0)
        got += bodies
        assert replies == []
    assert got == [f"m{i}".encode() for i in range(20)]


@pytest.mark.parametrize("seed", range(5))
def test_tampered_frames_are_rejected_counted_and_resent(seed: int) -> None:
    """Random frames in both directions get a flipped bit; everything still arrives once."""
    rng = np.random.default_rng(seed)
    a, b = pair()
    ends = {"a": a, "b": b}
    wires: dict[str, list[bytes]] = {"a": [], "b": []}  # frames in flight towards the key
    delivered: dict[str, list[bytes]] = {"a": [], "b": []}
    sent = {"a": [f"a{i}".encode() for i in range(60)], "b": [f"b{i}".encode() for i in range(60)]}
    tampered = 0
    for step in range(2000):
        for name, peer in (("a", "b"), ("b", "a")):
            if sent[name] and rng.random() < 0.5:
                wires[peer].append(ends[name].send(sent[name].pop(0)))
        for name, peer in (("a", "b"), ("b", "a")):
            arriving, wires[name] = wires[name], []  # a step is one network delay
            for frame in arriving:
                if rng.random() < 0.1:
                    frame = flip_bit(frame, rng)
                    tampered += 1
                bodies, replies = ends[name].receive(frame, now=float(step))
                delivered[name] += bodies
                wires[peer] += replies
            wires[peer] += ends[name].handle_timer(float(step))
        if not any(sent.values()) and not any(wires.values()) and \
                len(delivered["a"]) == len(delivered["b"]) == 60:
            break
    assert delivered["b"] == [f"a{i}".encode() for i in range(60)]
    assert delivered["a"] == [f"b{i}".encode() for i in range(60)]
    assert tampered > 0
    assert a.rejected + b.rejected > 0
    assert a.retransmitted + b.retransmitted > 0


def test_replayed_frame_is_rejected() -> None:
    a, b = pair()
    frame = a.send(b"pay me")
    assert b.receive(frame, 0.0)[0] == [b"pay me"]
    bodies, _ = b.receive(frame, 0.0)
    assert bodies == [] and b.rejected == 1


def test_lost_nack_is_repeated_then_gives_up() -> None:
    a, b = pair()
    frame = a.send(b"x")
    _, nack = b.receive(flip_bit(frame, np.random.default_rng(1)), now=0.0)
    assert len(nack) == 1  # ... and suppose it is lost
    assert b.handle_timer(0.5) == []
    again = b.handle_timer(1.0)
    assert len(again) == 1
    bodies, resent = a.receive(again[0], 1.0)
    assert bodies == [] and len(resent) == 1
    assert b.receive(resent[0], 1.1)[0] == [b"x"]
    assert b.next_deadline() is None
    c, d = pair()
    d.receive(flip_bit(c.send(b"y"), np.random.default_rng(2)), now=0.0)
    with pytest.raises(LinkFailed):
        for t in range(1, 100):
            d.handle_timer(float(t))
