"""Wire messages of the trusted key relay (MessagePack, one per frame on a relay channel).

A ``RelayForward`` carries one end-to-end key across one link, one-time-padded with one link
key of that link (named by its id, so the receiver takes the same bits from its own key
manager); a ``RelayAck`` travels back along the path and tells the origin whether the target
stored the key. Only a link's allocator (the end with the smaller name, as for the KMEs)
picks its keys: a sender that is not asks with ``RelayPadRequest`` and is told the key id in
``RelayPad``. Both carry an HMAC-SHA256 tag under the link's channel secret over every
other field, so a relay step cannot be forged or altered on the wire. Layout:
docs/protocol.md, "Trusted key relay".
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

import msgspec

from nodes.errors import MalformedMessage, PeerAuthenticationError

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
KeyId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Path = Annotated[list[Name], msgspec.Meta(min_length=2, max_length=64)]
MAC_BYTES = 32
MAX_KEY_BYTES = 1024
MAC_LABEL = b"qnet key relay v1"


class RelayForward(msgspec.Struct, tag="relay_forward", forbid_unknown_fields=True):
    """Key ``relay_id`` on its way from ``path[0]`` to ``path[-1]``; ``hop`` is the index in
    ``path`` of the receiver, ``link_key_id`` the link key the ciphertext is padded with."""

    relay_id: KeyId
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]  # the key's number on its path
    path: Path
    hop: Annotated[int, msgspec.Meta(ge=1, le=63)]
    link_key_id: KeyId
    ciphertext: Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_KEY_BYTES)]
    mac: bytes = b""


class RelayAck(msgspec.Struct, tag="relay_ack", forbid_unknown_fields=True):
    """The target's answer for ``relay_id``, on its way back; ``hop`` is the receiver's index.
    ``reason`` is empty when the key was stored at the target."""

    relay_id: KeyId
    path: Path
    hop: Annotated[int, msgspec.Meta(ge=0, le=62)]
    ok: bool
    reason: Annotated[str, msgspec.Meta(max_length=64)] = ""
    mac: bytes = b""


class RelayPadRequest(msgspec.Struct, tag="relay_pad_request", forbid_unknown_fields=True):
    """``path[hop - 1]`` has key ``relay_id`` to send but is not the allocator of its link
    to ``path[hop]``: it asks that node to pick the link key (never both ends pick)."""

    relay_id: KeyId
    path: Path
    hop: Annotated[int, msgspec.Meta(ge=1, le=63)]
    size: Annotated[int, msgspec.Meta(ge=1, le=MAX_KEY_BYTES)]  # bytes of key to pad
    mac: bytes = b""


class RelayPad(msgspec.Struct, tag="relay_pad", forbid_unknown_fields=True):
    """The allocator's answer: pad the key for ``path[hop + 1]`` with link key
    ``link_key_id``; ``hop`` is the receiver's index."""

    relay_id: KeyId
    path: Path
    hop: Annotated[int, msgspec.Meta(ge=0, le=62)]
    link_key_id: KeyId
    mac: bytes = b""


class RelayDone(msgspec.Struct, tag="relay_done", forbid_unknown_fields=True):
    """The origin starts no more keys and none is on its way: the path's nodes may stop
    (sent down the path; ``hop`` is the receiver's index)."""

    path: Path
    hop: Annotated[int, msgspec.Meta(ge=1, le=63)]
    mac: bytes = b""


RelayMessage = RelayForward | RelayAck | RelayPadRequest | RelayPad | RelayDone

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RelayMessage)


class BadRelayMessage(MalformedMessage):
    """A relay frame that does not decode, or whose path/hop do not fit who sent it."""

    counter = "relay_malformed"


class RelayAuthenticationError(PeerAuthenticationError):
    """A relay frame whose tag does not verify under the link's secret."""

    counter = "relay_bad_mac"


def _tag(secret: bytes, message: RelayMessage) -> bytes:
    body = _encoder.encode(msgspec.structs.replace(message, mac=b""))
    return hmac.new(secret, MAC_LABEL + body, hashlib.sha256).digest()


def seal(secret: bytes, message: RelayMessage) -> bytes:
    """The frame for ``message`` with its tag under ``secret``."""
    return _encoder.encode(msgspec.structs.replace(message, mac=_tag(secret, message)))


def open_frame(secret: bytes, frame: bytes, peer: str) -> RelayMessage:
    """Decode and verify one frame from ``peer`` (``BadRelayMessage``,
    ``RelayAuthenticationError``)."""
    try:
        message = _decoder.decode(frame)
    except msgspec.DecodeError as exc:
        raise BadRelayMessage(f"relay frame from {peer}: {exc}", peer=peer) from None
    if len(message.mac) != MAC_BYTES or not hmac.compare_digest(message.mac,
                                                                _tag(secret, message)):
        raise RelayAuthenticationError(f"relay frame from {peer}: bad tag", peer=peer)
    return message
