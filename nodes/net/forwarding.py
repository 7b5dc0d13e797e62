"""Forwarding plane of one node (sans-I/O): deliver, forward to the next hop, or drop by reason.

The same decision serves routed frames (``RoutedFrame``) and hybrid headers (src, dst, ttl):
a frame on the wire always has ``ttl >= 1``; each hop decrements it and never sends a 0.
Loops are prevented by the TTL and caught early by route consistency: with positive link
costs the next hop is strictly closer to the destination, so never the neighbour a frame came
from, and a node never sees its own frames come back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from nodes.net.header import HeaderAuthenticationError, HeaderCodec, HybridHeader, MalformedHeader
from nodes.net.messages import RoutedFrame
from nodes.net.spf import Route

DEFAULT_TTL = 32
DROP_REASONS = ("ttl_expired", "no_route", "loop", "own_frame", "malformed", "bad_mac",
                "unknown_link")


@dataclass(frozen=True)
class Deliver:
    """The frame is for this node."""


@dataclass(frozen=True)
class Forward:
    """Send on ``link`` to ``next_hop`` with ``ttl`` (already decremented)."""

    link: str
    next_hop: str
    ttl: int


@dataclass(frozen=True)
class Drop:
    """Not delivered, not forwarded; ``reason`` is one of ``DROP_REASONS``."""

    reason: str


Decision = Deliver | Forward | Drop


class Forwarder:
    """Decides per frame from the current routes; counts what it did."""

    def __init__(self, name: str, routes: Mapping[str, Route] | None = None,
                 default_ttl: int = DEFAULT_TTL) -> None:
        if not 1 <= default_ttl <= 255:
            raise ValueError("default_ttl must be in 1..255")
        self.name = name
        self.default_ttl = default_ttl
        self.routes: Mapping[str, Route] = dict(routes or {})
        self.counters: Counter[str] = Counter()

    def set_routes(self, routes: Mapping[str, Route]) -> None:
        """Install the table of a ``RoutesChanged`` action."""
        self.routes = dict(routes)

    def decide(self, src: str, dst: str, ttl: int, arrived_on: str | None) -> Decision:
        """What to do with a frame from ``src`` to ``dst``; ``arrived_on`` is None when this
        node originates it (then ``ttl`` is the initial TTL and is not decremented)."""
        if arrived_on is not None and ttl < 1:
            return self.drop("ttl_expired")
        if dst == self.name:
            self.counters["delivered"] += 1
            return Deliver()
        if arrived_on is not None and src == self.name:
            return self.drop("own_frame")
        route = self.routes.get(dst)
        if route is None:
            return self.drop("no_route")
        if route.link == arrived_on:
            return self.drop("loop")
        out_ttl = ttl if arrived_on is None else ttl - 1
        if out_ttl < 1:
            return self.drop("ttl_expired")
        self.counters["originated" if arrived_on is None else "forwarded"] += 1
        return Forward(route.link, route.next_hop, out_ttl)

    def originate(self, dst: str, proto: str, payload: bytes,
                  ttl: int | None = None) -> tuple[Decision, RoutedFrame]:
        """A new frame from this node and where it goes first."""
        frame = RoutedFrame(self.name, dst, self.default_ttl if ttl is None else ttl, proto,
                            payload)
        decision = self.decide(frame.src, dst, frame.ttl, None)
        if isinstance(decision, Forward):
            frame = msgspec.structs.replace(frame, ttl=decision.ttl)
        return decision, frame

    def handle(self, frame: RoutedFrame, arrived_on: str) -> tuple[Decision, RoutedFrame]:
        """A routed frame received on link ``arrived_on``; a forwarded copy has the new TTL."""
        decision = self.decide(frame.src, frame.dst, frame.ttl, arrived_on)
        if isinstance(decision, Forward):
            frame = msgspec.structs.replace(frame, ttl=decision.ttl)
        return decision, frame

    def drop(self, reason: str) -> Drop:
        """Count a drop for ``reason`` (also used by ``HeaderForwarder``) and return it."""
        self.counters[f"dropped_{reason}"] += 1
        return Drop(reason)


class HeaderForwarder:
    """A router's decision on one hybrid header datagram: verify it with the incoming link's
    key, decide from (src, dst, ttl), re-MAC it with the outgoing link's key and TTL - 1.

    A malformed header or a bad MAC is dropped and counted (``dropped_malformed``,
    ``dropped_bad_mac``) like the forwarder's own reasons; nothing unverified is forwarded."""

    def __init__(self, forwarder: Forwarder, link_keys: Mapping[str, bytes]) -> None:
        self.forwarder = forwarder
        self.codecs = {link: HeaderCodec(key) for link, key in link_keys.items()}
        self.counters = forwarder.counters

    def handle(self, data: bytes, arrived_on: str
               ) -> tuple[Decision, HybridHeader | None, bytes | None]:
        """(decision, the verified header or None, the datagram to send on or None)."""
        codec = self.codecs.get(arrived_on)
        if codec is None:
            return self.forwarder.drop("unknown_link"), None, None
        try:
            header = codec.decode(data)
        except HeaderAuthenticationError:
            return self.forwarder.drop("bad_mac"), None, None
        except MalformedHeader:
            return self.forwarder.drop("malformed"), None, None
        decision = self.forwarder.decide(header.src, header.dst, header.ttl, arrived_on)
        if not isinstance(decision, Forward):
            return decision, header, None
        out = self.codecs.get(decision.link)
        if out is None:
            return self.forwarder.drop("unknown_link"), header, None
        header = msgspec.structs.replace(header, ttl=decision.ttl)
        data = out.retag(data, decision.ttl)  # the same bytes as encoding ``header``
        return decision, header, data if data is not None else out.encode(header)
