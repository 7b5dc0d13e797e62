"""Link runtimes: what the daemon runs for each quantum link, one class per kind of link.

Every runtime implements ``LinkRuntime``: the requests it answers (a table from request type
to handler method), its two ends, what to do when a node's connection closes, and its own
counters. The daemon routes a request to the runtime of the request's ``link`` whose table
has the request's type; the runtime checks the sender's role. Runtimes reach shared state
only through ``LinkHost`` (clock, memories, taps, the daemon's nursery).

Kinds: ``photon`` (a WCP source at ``a``, detectors at ``b``: ``links.photon``), ``heralded``
(midpoint-heralded pairs into both ends' memories: ``links.heralded``). The next kind,
``qubit`` (a node sends a stored qubit through fibre to the other end's memory), implements
this same interface: ``qubit_send`` from either end takes the qubit out of its slot (through
``LinkHost.memories``), applies the channel's loss and decoherence for the fibre delay, and
pushes ``qubit_arrived`` to the far end with its new slot; the taps see it in flight.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import msgspec
import numpy as np

from emulator.clock import EmulatedClock
from emulator.daemon import protocol as p
from emulator.daemon.memories import QuantumMemories
from emulator.daemon.taps import Taps
from emulator.daemon.traffic import LinkStates

if TYPE_CHECKING:
    from emulator.daemon.session import Connection

Reply = msgspec.Struct | None  # None: the runtime answers later (long poll) or streams


class LinkHost(Protocol):
    """What a link runtime may use of the daemon (nothing else: no other runtime's state)."""

    clock: EmulatedClock
    memories: QuantumMemories
    taps: Taps
    link_states: LinkStates  # faults and classical load per link (``daemon.traffic``)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the daemon's nursery: an exception in it ends the daemon."""

    def rng(self, *words: int) -> np.random.Generator:
        """A generator seeded from the run's seed and ``words`` (independent per use)."""

    def new_pair_id(self) -> int:
        """A pair id unique in the run (over all links)."""

    def expire(self) -> None:
        """Apply memory cutoffs up to now."""

    async def slots_freed(self) -> None:
        """Return once some memory slot has been freed."""


class LinkRuntime(ABC):
    """One quantum link of one kind; subclasses fill ``kind`` and ``requests``."""

    kind: ClassVar[str]
    # request type -> name of the ``async def (conn, request) -> Reply`` method answering it
    requests: ClassVar[dict[type, str]]
    name: str
    ends: tuple[str, str]

    async def handle(self, conn: Connection, request: msgspec.Struct) -> Reply:
        """Answer ``request`` (a type of ``requests``) from ``conn``, an authenticated node."""
        return await getattr(self, self.requests[type(request)])(conn, request)

    @abstractmethod
    def connection_closed(self, conn: Connection) -> None:
        """``conn`` is gone: stop what it owned on this link, never send to it again."""

    @abstractmethod
    def counters(self) -> dict[str, float]:
        """This link's counters (for its ends' statistics and the daemon report)."""


def name_word(name: str) -> int:
    """A 64-bit word from a link name, to seed per-link generators independently."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def not_allowed(request: Any, message: str) -> p.Error:
    return p.Error("not_allowed", message, id=request.id)
