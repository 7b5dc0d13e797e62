"""Where a tunnel frame goes (sans-I/O): a user program's TCP bytes carried node to node.

A user program on a node reaches a peer node's program through a local TCP port of its own
node; every byte of that connection travels as ``TunnelFrame``s over the nodes' classical
channels (one channel ``tunnel`` per link, through the link relays), hop by hop along static
next hops the orchestrator computed, until the peer node hands them to its program's
listening port. A connection is named by the node that opened it and a number there.
``decide`` is the one forwarding decision; frame layout: docs/protocol.md, "Program tunnels".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

import msgspec

from nodes.errors import MalformedMessage

OPEN, DATA, CLOSE = 0, 1, 2
DEFAULT_TTL = 32
MAX_DATA = 65536

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class TunnelFrame(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """Bytes of connection ``conn`` opened at ``origin``, on their way to ``dst`` (the far end,
    or ``origin`` itself for the answers)."""

    origin: Name
    conn: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    dst: Name
    kind: Annotated[int, msgspec.Meta(ge=OPEN, le=CLOSE)]
    ttl: Annotated[int, msgspec.Meta(ge=1, le=255)]
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_DATA)] = b""


class BadTunnelFrame(MalformedMessage):
    counter = "tunnel_malformed"


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(TunnelFrame)


def encode(frame: TunnelFrame) -> bytes:
    return _encoder.encode(frame)


def decode(payload: bytes, peer: str) -> TunnelFrame:
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise BadTunnelFrame(f"tunnel frame from {peer}: {exc}", peer=peer) from None


@dataclass(frozen=True)
class ToProgram:
    """Deliver to this node's end of the connection (``originated``: we opened it)."""

    originated: bool


@dataclass(frozen=True)
class Onward:
    next_hop: str
    frame: TunnelFrame


@dataclass(frozen=True)
class Dropped:
    reason: str  # no_route, ttl_expired


def decide(node: str, routes: Mapping[str, str], frame: TunnelFrame) -> ToProgram | Onward | Dropped:
    """Deliver, forward (TTL decremented) or drop ``frame`` arriving at ``node``."""
    if frame.dst == node:
        return ToProgram(originated=frame.origin == node)
    next_hop = routes.get(frame.dst)
    if next_hop is None:
        return Dropped("no_route")
    if frame.ttl <= 1:
        return Dropped("ttl_expired")
    return Onward(next_hop, msgspec.structs.replace(frame, ttl=frame.ttl - 1))

