"""Authenticated channel set-up between two nodes (sans-I/O): the hello, its MAC, its checks.

The dialler's first frame on a new connection is a ``ChannelHello`` naming sender, receiver,
channel and a fresh nonce, with an HMAC-SHA256 under the link's secret (handed to both ends
by the orchestrator) over run id, sender, receiver, channel and nonce. ``HelloGate`` is the
acceptor's check for the listener of one peer: the peer's key, replay rejection (nonces seen).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Annotated

import msgspec

from nodes.errors import MalformedMessage, PeerAuthenticationError, UnexpectedMessage

HELLO_MAX_BYTES = 1024  # frame limit of a connection until its hello is authenticated
NONCE_BYTES = 16
MAC_BYTES = 32
MAC_LABEL = "qnet channel hello v1"

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
ChannelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class ChannelHello(msgspec.Struct, tag="channel_hello", forbid_unknown_fields=True):
    """First frame of a node-to-node connection: who opens which channel to whom."""

    node: Name  # the sender
    to: Name
    channel: ChannelName
    nonce: Annotated[bytes, msgspec.Meta(min_length=NONCE_BYTES, max_length=NONCE_BYTES)]
    mac: Annotated[bytes, msgspec.Meta(min_length=MAC_BYTES, max_length=MAC_BYTES)]


class BadHello(MalformedMessage):
    """The first frame is not a well-formed ``ChannelHello``."""

    counter = "bad_hellos"


class SpoofedHello(PeerAuthenticationError):
    """A hello that names the wrong peer or path, or whose MAC does not verify."""

    counter = "spoofed_hellos"


class ReplayedHello(PeerAuthenticationError):
    """A correctly authenticated hello whose nonce was already used."""

    counter = "replayed_hellos"


class DuplicateChannel(UnexpectedMessage):
    """A hello for a channel that is already pending or open (it never replaces it)."""

    counter = "duplicate_channels"


class TooManyPending(UnexpectedMessage):
    """The peer has too many channels waiting to be accepted."""

    counter = "rejected_channels"


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ChannelHello)


def hello_mac(key: bytes, run_id: str, sender: str, receiver: str, channel: str,
              nonce: bytes) -> bytes:
    """HMAC-SHA256 over the hello's fields (msgpack array: unambiguous field boundaries)."""
    message = _encoder.encode([MAC_LABEL, run_id, sender, receiver, channel, nonce])
    return hmac.new(key, message, hashlib.sha256).digest()


def make_hello(key: bytes, run_id: str, sender: str, receiver: str, channel: str) -> bytes:
    """The encoded hello with a fresh random nonce."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    mac = hello_mac(key, run_id, sender, receiver, channel, nonce)
    return _encoder.encode(ChannelHello(sender, receiver, channel, nonce, mac))


def decode_hello(payload: bytes) -> ChannelHello:
    """Typed decode; anything else (wrong type, bad msgpack, absurd nesting) is ``BadHello``."""
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError, ValueError) as exc:
        raise BadHello(f"not a channel hello: {exc}") from None


class HelloGate:
    """Verifies hellos that arrive on ``node``'s listener reserved for ``peer``.

    A hello passes only if it names ``peer`` as sender and ``node`` as receiver (so it came
    on the path of that peer's link), its MAC verifies under the link key, and its nonce is
    new. Nonces are remembered only for hellos that verified, so only the key holder can
    grow the set.
    """

    def __init__(self, run_id: str, node: str, peer: str, key: bytes) -> None:
        self.run_id = run_id
        self.node = node
        self.peer = peer
        self._key = key
        self._seen: set[bytes] = set()

    def check(self, payload: bytes) -> ChannelHello:
        hello = decode_hello(payload)
        if hello.node != self.peer or hello.to != self.node:
            raise SpoofedHello(f"hello from {hello.node!r} to {hello.to!r} on the listener for "
                               f"{self.peer!r}", peer=self.peer)
        expected = hello_mac(self._key, self.run_id, hello.node, hello.to, hello.channel,
                             hello.nonce)
        if not hmac.compare_digest(expected, hello.mac):
            raise SpoofedHello(f"hello for channel {hello.channel!r} fails authentication",
                               peer=self.peer)
        if hello.nonce in self._seen:
            raise ReplayedHello(f"replayed hello for channel {hello.channel!r}", peer=self.peer)
        self._seen.add(hello.nonce)
        return hello
