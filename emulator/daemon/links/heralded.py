"""Heralded entanglement link runtime: midpoint-heralded pairs into both ends' memories.

Attempts run at ``attempt_rate_hz``, each heralded with probability ``p``; a success stores a
Werner pair (at emission time) in one slot at each end and heralds it to both ends one fibre
delay later; with a frequency-conversion stage, a noise herald stores I/4 instead.
Generation pauses while either end holds its limit of this link's halves (or has no free
slot) and resumes when slots free. Which slot holds which pair is kept by the memories
(``QuantumMemories.owner``/``held``) only. An exception in the link's tasks ends the daemon.
"""

from __future__ import annotations

import math
from collections import deque

import trio

from emulator.child_config import DaemonEntanglementLink
from emulator.daemon import memories as mem
from emulator.daemon import protocol as p
from emulator.daemon.links import LinkHost, LinkRuntime, Reply, name_word, not_allowed
from emulator.daemon.session import Connection
from emulator.physics import bell_diagonal as bd
from emulator.physics import channels
from emulator.physics.conversion import link_heralding


class HeraldedLinkRuntime(LinkRuntime):
    """Generation state, heralds in flight and per-end inboxes of one entanglement link."""

    kind = "heralded"
    requests = {p.EntangleStart: "entangle_start", p.EntangleStop: "entangle_stop",
                p.PairAwait: "pair_await"}

    def __init__(self, link: DaemonEntanglementLink, host: LinkHost,
                 shares: dict[str, int]) -> None:
        e = link.entanglement
        self.link = link
        self.name = link.name
        self.host = host
        self.clock = host.clock
        self.memories = host.memories
        self.rng = host.rng(name_word(link.name), 2)
        heralding = link_heralding(link.length_km, e)  # with its conversion stage, if any
        self.p = heralding.p_herald
        self.true_fraction = heralding.true_fraction  # the rest are noise heralds: I/4
        self.rate_hz = e.attempt_rate_hz
        self.delay_s = float(channels.fibre_delay(link.length_km))
        self.coeffs = bd.werner_coefficients(e.source_fidelity)
        self.mixed = bd.werner_coefficients(0.25)
        self.ends = (link.a, link.b)
        self.shares = dict(shares)  # even split of each end's slots over its links
        self.limit = dict(shares)
        self.inbox: dict[str, deque[p.DeliveredPair]] = {end: deque() for end in self.ends}
        self.arrived = {end: trio.Event() for end in self.ends}
        self.in_flight: deque[tuple[float, int, mem.SlotRef, mem.SlotRef, float]] = deque()
        self.flight_event = trio.Event()
        self.scope: trio.CancelScope | None = None
        self.generated = 0
        self.state = host.link_states.add(link.name)  # quantum-plane faults (daemon.traffic)

    def counters(self) -> dict[str, float]:
        return {"pairs_generated": self.generated}

    def connection_closed(self, conn: Connection) -> None:
        """Pairs keep being generated for the other end; nothing here belongs to ``conn``."""

    def has_room(self) -> bool:
        return all(self.memories.held(self.name, e) < self.limit[e]
                   and self.memories.free_slots(e) > 0 for e in self.ends)

    # -- requests -------------------------------------------------------------------------------

    def _check_end(self, conn: Connection, request) -> p.Error | None:
        if conn.node not in self.ends:
            return not_allowed(request, f"{conn.node!r} is not an end of {self.name!r}")
        return None

    async def entangle_start(self, conn: Connection, request: p.EntangleStart) -> Reply:
        """Start (idempotent); ``max_pending`` > 0 caps the halves the sender holds at a time."""
        if (error := self._check_end(conn, request)) is not None:
            return error
        if request.max_pending < 0:
            return p.Error("bad_request", "max_pending must be >= 0", id=request.id)
        node = conn.node
        if request.max_pending > 0:
            self.limit[node] = min(request.max_pending, self.shares[node])
        if self.scope is None:
            self.scope = trio.CancelScope()
            self.host.spawn(self._run, self.scope)
        return p.EntangleStarted(request.id, self.name, self.p, self.rate_hz, self.delay_s,
                                 self.limit[node])

    async def entangle_stop(self, conn: Connection, request: p.EntangleStop) -> Reply:
        if (error := self._check_end(conn, request)) is not None:
            return error
        if self.scope is not None:
            self.scope.cancel()
            self.scope = None
        return p.Done(request.id, self.clock.now())

    async def pair_await(self, conn: Connection, request: p.PairAwait) -> Reply:
        """Long poll, answered from the connection's own nursery (requests keep flowing)."""
        if (error := self._check_end(conn, request)) is not None:
            return error
        if not math.isfinite(request.timeout_s):
            return p.Error("bad_request", "timeout_s must be finite", id=request.id)
        conn.spawn(self._await_pairs, conn, request)
        return None

    async def _await_pairs(self, conn: Connection, request: p.PairAwait) -> None:
        node = conn.node
        assert node is not None
        box = self.inbox[node]
        self.host.expire()
        with trio.move_on_after(max(0.0, request.timeout_s) / self.clock.time_scale):
            while not self._prune(node):
                if self.arrived[node].is_set():
                    self.arrived[node] = trio.Event()
                await self.arrived[node].wait()
        self._prune(node)
        n = min(len(box), max(1, request.max))
        pairs = [box.popleft() for _ in range(n)]
        peer = self.link.b if node == self.link.a else self.link.a
        await conn.send(p.PairsDelivered(request.id, self.name, peer, pairs))

    # -- generation and heralds -------------------------------------------------------------

    async def _run(self, scope: trio.CancelScope) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._deliver)
                await self._generate()

    async def _generate(self) -> None:
        t = self.clock.now()  # attempts happen from here on
        while True:
            while not self.has_room():
                await self.host.slots_freed()
                t = max(t, self.clock.now())
            t_emit = t + float(self.rng.geometric(self.p)) / self.rate_hz
            await self.clock.sleep_until(t_emit)
            t = t_emit
            self.host.expire()
            if not self.has_room():
                continue  # another user took the last slot while we waited
            factor = self.state.at(t_emit).factor  # a cut or degraded fibre thins heralds
            if factor < 1.0 and not self.rng.random() < factor:
                continue
            pair = self.host.new_pair_id()
            true = self.true_fraction >= 1.0 or self.rng.random() < self.true_fraction
            ref_a, ref_b = self.memories.store_pair(*self.ends,
                                                    self.coeffs if true else self.mixed, t_emit,
                                                    owner=(self.name, pair))
            self.generated += 1
            if self.host.taps:
                self.host.taps.pair_emitted(self.name, pair, self.ends, t_emit)
            self.in_flight.append((t_emit + self.delay_s, pair, ref_a, ref_b, t_emit))
            self.flight_event.set()

    async def _deliver(self) -> None:
        while True:
            while not self.in_flight:
                self.flight_event = trio.Event()
                await self.flight_event.wait()
            t_herald, pair, ref_a, ref_b, t_emit = self.in_flight[0]
            await self.clock.sleep_until(t_herald)
            self.in_flight.popleft()
            for ref in (ref_a, ref_b):
                if self.memories.owner(ref) != (self.name, pair):
                    continue  # lost before the herald arrived (cutoff)
                if self.host.taps:
                    self.host.taps.pair_heralded(self.name, pair, ref.node, t_herald)
                self.inbox[ref.node].append(p.DeliveredPair(pair, ref.slot, t_emit, t_herald))
                self.arrived[ref.node].set()

    def _prune(self, node: str) -> int:
        """Drop heralded halves lost since (cutoff); returns how many are left."""
        box = self.inbox[node]
        owner = self.memories.owner
        if any(owner(mem.SlotRef(node, x.slot)) != (self.name, x.pair) for x in box):
            kept = [x for x in box if owner(mem.SlotRef(node, x.slot)) == (self.name, x.pair)]
            box.clear()
            box.extend(kept)
        return len(box)
