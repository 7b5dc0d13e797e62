"""Teleport's two ends as sans-I/O cores: what is sent, what a reply must be, what is reported.

``SenderCore`` picks each input state, builds the ``Teleported`` message from the Bell
measurement and checks the ``Ack``; ``ReceiverCore`` validates each ``Teleported``, keeps the
verification outcomes and the per-state storage times of both halves (a bounded uniform
subsample, as in ``pairs/ends.py``) and builds the report. No model here: the orchestrator
predicts the fidelity from the storage times (``teleport/model.py``).
"""

from __future__ import annotations

import math
import statistics

import msgspec
import numpy as np

from nodes.entanglement.pairs.ends import Reservoir
from nodes.errors import MalformedMessage, UnexpectedMessage

STORAGE_SAMPLE = 1000  # states whose storage times (a's half, b's half) the report carries

# Bloch angles (theta, phi) of the named states
NAMED = {"0": (0.0, 0.0), "1": (math.pi, 0.0), "+": (math.pi / 2, 0.0),
         "-": (math.pi / 2, math.pi), "r": (math.pi / 2, math.pi / 2),
         "l": (math.pi / 2, -math.pi / 2)}


class Teleported(msgspec.Struct, tag="teleported", array_like=True):
    """a -> b: the BSM outcome for pair ``pair``; ``theta, phi`` for verification only;
    ``stored`` = how long a's half was stored (emulated s, from the daemon's timestamps)."""

    pair: int
    m1: int
    m2: int
    theta: float
    phi: float
    stored: float


class Ack(msgspec.Struct, tag="ack", array_like=True):
    pair: int


class End(msgspec.Struct, tag="end", array_like=True):
    sent: int


Message = Teleported | Ack | End
encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def decode(payload: bytes) -> Message:
    """A teleport message from the wire; anything else raises ``MalformedMessage``."""
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"not a teleport message: {exc}") from None


def random_state(rng: np.random.Generator) -> tuple[float, float]:
    """Uniform (Haar) point on the Bloch sphere: ``cos theta`` uniform in [-1, 1]."""
    return math.acos(1 - 2 * float(rng.random())), 2 * math.pi * float(rng.random())


class SenderCore:
    """End ``a``: one state in flight at a time, ``count`` states in all."""

    def __init__(self, count: int, state: str, rng: np.random.Generator) -> None:
        self.count, self.state, self.rng = count, state, rng
        self.sent = 0
        self._in_flight: int | None = None
        self.round_trips = Reservoir(STORAGE_SAMPLE, rng)

    @property
    def done(self) -> bool:
        return self.sent >= self.count

    def next_input(self) -> tuple[float, float]:
        return NAMED[self.state] if self.state != "random" else random_state(self.rng)

    def teleported(self, pair: int, m1: int, m2: int, theta: float, phi: float,
                   stored: float) -> Teleported:
        if self._in_flight is not None:
            raise RuntimeError("one state at a time")
        self._in_flight = pair
        return Teleported(pair, m1, m2, theta, phi, stored)

    def on_reply(self, message: Message, round_trip_s: float) -> None:
        """The receiver's reply; anything but the ack of the state in flight is an error."""
        if not isinstance(message, Ack) or message.pair != self._in_flight:
            raise UnexpectedMessage(f"{message!r} while pair {self._in_flight} is in flight")
        self._in_flight = None
        self.sent += 1
        self.round_trips.add(round_trip_s)

    def end(self) -> End:
        return End(self.sent)

    def entry(self, name: str) -> dict:
        trips = self.round_trips.items
        return {"section": "teleport", "role": "sender", "name": name, "sent": self.sent,
                "round_trip_ms_median": statistics.median(trips) * 1e3 if trips else None,
                "round_trip_ms_p90": float(np.percentile(trips, 90)) * 1e3 if trips else None}


class ReceiverCore:
    """End ``b``: validate each state's message, count verification hits, sample storage."""

    def __init__(self, nodes: list[str], rng: np.random.Generator) -> None:
        self.nodes = nodes  # [a, b]: the order of each storage sample
        self.hits = self.count = 0
        self.storage = Reservoir(STORAGE_SAMPLE, rng)
        self.ended: End | None = None

    def on_message(self, message: Message) -> Teleported | None:
        """A ``Teleported`` to apply (None once ``End`` came)."""
        if self.ended is not None:
            raise UnexpectedMessage(f"{type(message).__name__} after end")
        if isinstance(message, End):
            self.ended = message
            return None
        if not isinstance(message, Teleported):
            raise UnexpectedMessage(f"{type(message).__name__} at the receiver")
        if message.m1 not in (0, 1) or message.m2 not in (0, 1) or message.stored < 0:
            raise MalformedMessage(f"teleported: outcome ({message.m1}, {message.m2}), "
                                   f"stored {message.stored}")
        return message

    def verified(self, message: Teleported, bit: int, stored_b: float) -> None:
        """Outcome 0 along the input's Bloch axis is a hit (probability = the fidelity)."""
        self.count += 1
        self.hits += int(bit == 0)
        self.storage.add([message.stored, stored_b])

    def entry(self, name: str) -> dict:
        n = self.count
        f = self.hits / n if n else math.nan
        return {"section": "teleport", "role": "report", "name": name, "count": n,
                "fidelity_mean": f, "fidelity_std": math.sqrt(f * (1 - f) / n) if n else None,
                "storage_s": {"nodes": self.nodes, "pairs": self.storage.seen,
                              "sample": self.storage.items}}
