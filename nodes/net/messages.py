"""Messages of the network layer (routing, routed frames, streams): the one place they are defined.

They travel a link's classical channel as MessagePack maps tagged by ``type`` (``decode`` below
is the boundary: anything else is a ``MalformedMessage``). Times are the sender's clock in
seconds; names are node and link names of the scenario. Documented in docs/protocol.md.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from nodes.errors import MalformedMessage

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Seconds = Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
MAX_LINKS_PER_LSA = 1024
MAX_PAYLOAD = 65536
MAX_SACK_BLOCKS = 16


class Hello(msgspec.Struct, tag="hello", frozen=True):
    """Router -> neighbour on one link, every hello interval: who I am and whom I hear.

    ``seen`` is the router last heard on this link (two-way check); ``echo``/``held`` return the
    peer's last ``t`` and how long it was held, so the peer measures the round trip."""

    router: Name
    link: Name
    hello_interval: Seconds
    dead_interval: Seconds
    t: Seconds
    seen: Name | None = None
    echo: Seconds | None = None
    held: Seconds = 0.0


class LinkAdvert(msgspec.Struct, frozen=True):
    """One adjacency in a link-state advert with the raw metrics a cost is computed from."""

    neighbour: Name
    link: Name
    length_km: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    loss_db: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0
    rtt_ms: Annotated[float, msgspec.Meta(ge=0.0)] | None = None


class Lsa(msgspec.Struct, tag="lsa", frozen=True):
    """Link-state advert of ``origin``: its full adjacencies; newer means a larger ``seq``."""

    origin: Name
    seq: Seq
    age: Seconds
    links: Annotated[tuple[LinkAdvert, ...], msgspec.Meta(max_length=MAX_LINKS_PER_LSA)] = ()


class LsaAck(msgspec.Struct, tag="lsa_ack", frozen=True):
    """Neighbour -> flooder: this instance (origin, seq) of an LSA arrived; stop retransmitting."""

    origin: Name
    seq: Seq


class RoutedFrame(msgspec.Struct, tag="routed", frozen=True):
    """A frame from ``src`` to ``dst`` forwarded hop by hop; ``ttl`` falls by one per hop.

    ``proto`` names the service the payload belongs to (``datagram`` or ``stream``)."""

    src: Name
    dst: Name
    ttl: Annotated[int, msgspec.Meta(ge=0, le=255)]
    proto: Annotated[str, msgspec.Meta(pattern="^(datagram|stream)$")]
    payload: Annotated[bytes, msgspec.Meta(max_length=MAX_PAYLOAD + 1024)]


class DatagramBody(msgspec.Struct, tag="dgram", frozen=True):
    """The payload of a ``datagram`` routed frame: the destination ``port`` and the data."""

    port: Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_PAYLOAD)]


class StreamSegment(msgspec.Struct, tag="seg", frozen=True):
    """One message of a reliable stream: the ``seq``-th message the sender wrote on ``stream``."""

    stream: Seq
    seq: Seq
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_PAYLOAD)]


class StreamAck(msgspec.Struct, tag="ack", frozen=True):
    """Receiver -> sender: every message below ``cum`` arrived, and those in the ``sack`` ranges
    [start, end) above it; ``window`` is how many messages past ``cum`` it will buffer."""

    stream: Seq
    cum: Seq
    window: Annotated[int, msgspec.Meta(ge=0, le=2**20)]
    sack: Annotated[tuple[tuple[Seq, Seq], ...], msgspec.Meta(max_length=MAX_SACK_BLOCKS)] = ()


Message = Hello | Lsa | LsaAck | RoutedFrame
StreamMessage = StreamSegment | StreamAck
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Message)
_STREAM_DECODER = msgspec.msgpack.Decoder(StreamMessage)
_DATAGRAM_DECODER = msgspec.msgpack.Decoder(DatagramBody)


def encode(message: Message | StreamMessage | DatagramBody) -> bytes:
    """MessagePack bytes of one message (tagged map)."""
    return _ENCODER.encode(message)


def decode(data: bytes) -> Message:
    """The routing-plane message in ``data``; anything else is a ``MalformedMessage``."""
    try:
        return _DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedMessage(f"bad network-layer message: {exc}") from None


def decode_stream(data: bytes) -> StreamMessage:
    """The stream segment or ack carried in a routed frame's payload, or ``MalformedMessage``."""
    try:
        return _STREAM_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedMessage(f"bad stream message: {exc}") from None


def decode_datagram(data: bytes) -> DatagramBody:
    """The port and data carried in a ``datagram`` routed frame, or ``MalformedMessage``."""
    try:
        return _DATAGRAM_DECODER.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedMessage(f"bad datagram body: {exc}") from None
