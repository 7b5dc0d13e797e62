"""Hybrid packets at one node (sans-I/O): match each verified header with its payload's arrival,
switch the payload to the header's next hop (with the drift correction) and forward the header.

Inputs are header datagrams (``header``), the daemon's ``PayloadArrived`` pushes
(``arrival``) and the outcome of a switch or store the shell asked for (``switched``,
``stored``: a destination with a delay line stores its payloads from it); outputs are actions
the shell performs. A header and its payload's arrival come in either order. A header
whose payload was lost or late is forwarded with ``FLAG_PAYLOAD_LOST`` (and ``_LATE``) so the
destination counts it; a bad MAC, TTL 0 or an unknown destination is dropped and counted by
the ``HeaderForwarder``, never forwarded (its payload then dies in the delay line as late).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import msgspec

from emulator.daemon.protocol import PayloadArrived
from nodes.net.forwarding import Deliver, Forward, HeaderForwarder
from nodes.net.header import (
    FLAG_PAYLOAD_LATE,
    FLAG_PAYLOAD_LOST,
    PAYLOAD_NONE,
    HybridHeader,
)

STALE_S = 1.0  # emulated s a header or an arrival waits for its other half before dropped


Arrival = PayloadArrived  # what the daemon pushed: the node's own knowledge of a payload


@dataclass(frozen=True)
class Switch:
    """Ask the daemon to switch ``payload`` onto ``link``, through ``rotation`` if any
    (``flow``: its header's, for the shell's latency samples per flow)."""

    payload: int
    link: str
    rotation: tuple[float, float, float] | None
    flow: int


@dataclass(frozen=True)
class Store:
    """Ask the daemon to store ``payload`` (in this destination's delay line, arrived on
    ``link``) in a memory slot, through ``rotation`` if any (``flow``: its header's)."""

    payload: int
    link: str
    rotation: tuple[float, float, float] | None
    flow: int


@dataclass(frozen=True)
class SendHeader:
    neighbour: str
    data: bytes


@dataclass(frozen=True)
class Delivered:
    """A packet for this node: ``arrival`` is None when its payload was lost on the way
    (``late`` tells whether at a router's switch)."""

    header: HybridHeader
    arrival: Arrival | None
    late: bool = False


@dataclass(frozen=True)
class Discard:
    """A stored payload whose header never came: free its slot."""

    slot: int


Action = Switch | Store | SendHeader | Delivered | Discard


class HybridCore:
    """One node's pending headers and arrivals; ``compensate`` sets the waveplate from the
    readout (the inverse of the reference's measured rotation)."""

    def __init__(self, forwarder: HeaderForwarder, compensate: bool) -> None:
        self.forwarder = forwarder
        self.compensate = compensate
        self.counters: Counter[str] = forwarder.counters
        # a forwarded header travels with the datagram the forwarder made (sent as is unless
        # flags must be added: one encoding per hop)
        self._headers: dict[int, tuple[float, HybridHeader, Forward | None, bytes | None]] = {}
        self._arrivals: dict[int, tuple[float, Arrival]] = {}
        self._switching: dict[int, tuple[HybridHeader, Forward, bytes | None]] = {}
        self._storing: dict[int, tuple[HybridHeader, Arrival]] = {}

    def header(self, data: bytes, link: str, now: float) -> list[Action]:
        """A header datagram from the neighbour on ``link``."""
        decision, header, out = self.forwarder.handle(data, link)
        if header is None or not isinstance(decision, Forward | Deliver):
            return []  # dropped and counted by the forwarder
        forward = decision if isinstance(decision, Forward) else None
        p = header.payload
        if p.kind == PAYLOAD_NONE or p.flags & FLAG_PAYLOAD_LOST:
            self.counters["hybrid_lost_upstream"] += 1
            if forward is None:
                return [Delivered(header, None, bool(p.flags & FLAG_PAYLOAD_LATE))]
            return [self._send(header, forward, 0, out)]
        arrival = self._arrivals.pop(p.payload_id, None)
        if arrival is None:
            self._headers[p.payload_id] = (now, header, forward, out)
            return []
        return self._match(header, forward, out, arrival[1])

    def arrival(self, arrival: Arrival, now: float) -> list[Action]:
        """The daemon's push for a payload reaching this node (or lost before it)."""
        waiting = self._headers.pop(arrival.payload, None)
        if waiting is None:
            self._arrivals[arrival.payload] = (now, arrival)
            return []
        _, header, forward, out = waiting
        return self._match(header, forward, out, arrival)

    def _match(self, header: HybridHeader, forward: Forward | None, out: bytes | None,
               arrival: Arrival) -> list[Action]:
        rotation = tuple(-x for x in arrival.reference) if self.compensate else None
        if forward is None:
            if arrival.present and arrival.slot < 0:  # in our delay line: store it first
                self._storing[arrival.payload] = (header, arrival)
                return [Store(arrival.payload, arrival.link, rotation, header.flow)]  # type: ignore[arg-type]
            self.counters["hybrid_delivered" if arrival.present else "hybrid_lost"] += 1
            return [Delivered(header, arrival if arrival.present else None)]
        if not arrival.present:
            self.counters["hybrid_lost"] += 1
            return [self._send(header, forward, FLAG_PAYLOAD_LOST)]
        self._switching[arrival.payload] = (header, forward, out)
        return [Switch(arrival.payload, forward.link, rotation, header.flow)]  # type: ignore[arg-type]

    def stored(self, payload: int, slot: int | None) -> list[Action]:
        """The daemon stored ``payload`` in ``slot`` (the waveplate applied: the delivered
        arrival has no readout left to correct), or refused (late: None)."""
        header, arrival = self._storing.pop(payload)
        if slot is None:
            self.counters["hybrid_late"] += 1
            return [Delivered(header, None, late=True)]
        self.counters["hybrid_delivered"] += 1
        done = msgspec.structs.replace(
            arrival, present=True, slot=slot,
            reference=(0.0, 0.0, 0.0) if self.compensate else arrival.reference)
        return [Delivered(header, done)]

    def switched(self, payload: int, ok: bool) -> list[Action]:
        """The daemon set the switch (``ok``) or refused it (late): forward the header."""
        header, forward, out = self._switching.pop(payload)
        self.counters["hybrid_switched" if ok else "hybrid_late"] += 1
        return [self._send(header, forward, 0 if ok else FLAG_PAYLOAD_LOST | FLAG_PAYLOAD_LATE,
                           out)]

    def _send(self, header: HybridHeader, forward: Forward, flags: int,
              out: bytes | None = None) -> SendHeader:
        """The header on to the next hop: ``out`` (the forwarder's datagram) when no flag is
        added, else re-encoded with ``flags``."""
        if flags or out is None:
            payload = msgspec.structs.replace(header.payload, flags=header.payload.flags | flags)
            header = msgspec.structs.replace(header, payload=payload)
            out = self.forwarder.codecs[forward.link].encode(header)
        data = out
        self.counters["hybrid_headers_forwarded"] += 1
        return SendHeader(forward.next_hop, data)

    def expire(self, now: float) -> list[Action]:
        """Drop halves that waited ``STALE_S`` for the other; free stored payloads' slots."""
        out: list[Action] = []
        for pid in [k for k, (t, *_) in self._headers.items() if now - t > STALE_S]:
            _, header, forward, _ = self._headers.pop(pid)
            self.counters["hybrid_header_unmatched"] += 1
            if forward is None:
                out.append(Delivered(header, None))
            else:
                out.append(self._send(header, forward, FLAG_PAYLOAD_LOST))
        for pid in [k for k, (t, _) in self._arrivals.items() if now - t > STALE_S]:
            _, arrival = self._arrivals.pop(pid)
            self.counters["hybrid_payload_unmatched"] += 1
            if arrival.present and arrival.slot >= 0:
                out.append(Discard(arrival.slot))
        return out

    def pending(self) -> int:
        return (len(self._headers) + len(self._arrivals) + len(self._switching)
                + len(self._storing))
