"""The quantum daemon's TCP server: authenticates nodes, runs link sources, pushes detections.

One trio task per node connection reads requests; one task per running source processes its
frames in emulated time with ``detection.detect_frame`` and pushes ``Detections`` to the link's
receiver only (information separation, DESIGN §4). A bad frame costs only its own connection.
Wire format and rules: ``emulator.daemon.protocol`` and docs/protocol.md.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field

import msgspec
import numpy as np
import trio

from emulator.child_config import DaemonConfig, DaemonEntanglementLink, DaemonLink
from emulator.clock import EmulatedClock
from emulator.daemon import memories as mem
from emulator.daemon import protocol as p
from emulator.physics import channels, detection
from emulator.physics import states as st
from emulator.prf import intensity_thresholds
from emulator.scenario import FIBRE_GROUP_DELAY_S_PER_KM, LinkEntanglement
from emulator.wire import FramedStream, FrameTooLarge

LAG_WARNING_S = 0.1  # log when frame processing falls this far behind (doubling thereafter)
log = logging.getLogger("qnet.daemon")

HELLO_TIMEOUT_S = 10.0  # wall seconds an unauthenticated connection may stay silent
CLOSE_DRAIN_S = 0.5  # after a fatal error: read and discard this long so the Error is not reset
MAX_RECORDS_PER_MESSAGE = 400_000  # 10 bytes each: keeps a Detections frame well under MAX_FRAME
MAX_BACKLOG_RECORDS = 4_000_000  # detections buffered for a receiver that has not opened yet


class Connection:
    """One node's connection: its authenticated name and what the daemon sent it."""

    def __init__(self, framed: FramedStream, sent_by_node: dict[str, Counter]) -> None:
        self.framed = framed
        self.node: str | None = None
        self.sent: Counter[str] = Counter()  # message tag -> count sent on this connection
        self.closed = False
        self._sent_by_node = sent_by_node
        self.nursery: trio.Nursery | None = None  # long polls of this connection (PairAwait)

    async def send(self, message: msgspec.Struct) -> bool:
        """Send one message; False (and marked closed) if the peer has gone."""
        if self.closed:
            return False
        try:
            await self.framed.send(p.encoder.encode(message))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            return False
        tag = type(message).__struct_config__.tag
        self.sent[tag] += 1
        self._sent_by_node[self.node or "?"][tag] += 1
        return True


@dataclass
class SourceRun:
    """A running source: the sender's PRF key and decoy settings, and its stop request."""

    key: bytes
    intensities: list[float]
    probabilities: list[float]
    t_start: float
    owner: Connection
    stop_slot: int | None = None
    wake: trio.CancelScope | None = None
    done: trio.Event = field(default_factory=trio.Event)


class LinkRuntime:
    """Physics parameters, source state, receiver sink and counters of one quantum link."""

    def __init__(self, link: DaemonLink, seed: int, clock: EmulatedClock) -> None:
        q = link.quantum
        self.link = link
        self.clock = clock
        name_word = int.from_bytes(hashlib.sha256(link.name.encode()).digest()[:8], "little")
        self.rng = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, name_word])
        self.rate_hz = q.source.rate_hz
        self.slots_per_frame = max(1, round(q.source.rate_hz * q.frame_ms / 1000.0))
        self.delay_s = link.length_km * FIBRE_GROUP_DELAY_S_PER_KM
        self.eta = float(channels.transmittance(link.length_km, q.attenuation_db_per_km)) * (
            q.detector.efficiency
        )
        self.p_dc = q.detector.dark_count_probability
        self.e_det = q.detector.misalignment
        self.source: SourceRun | None = None
        self.sink: Connection | None = None
        self.backlog: deque[p.Detections] = deque()
        self.backlog_records = 0
        self.lock = trio.Lock()  # orders pushes against DetectorOpen's flush
        self.frames = 0
        self.pulses = 0
        self.detections = 0
        self.lag_worst = 0.0
        self.lag_recent = 0.0
        self.dropped_frames = 0

    def request_stop(self) -> None:
        """Stop the source after the current slot (no-op if not running or already stopping)."""
        run = self.source
        if run is None or run.stop_slot is not None:
            return
        current = math.floor((self.clock.now() - run.t_start) * self.rate_hz)
        run.stop_slot = max(0, current + 1)
        if run.wake is not None:
            run.wake.cancel()

    async def run_source(self, run: SourceRun) -> None:
        """Process frames back to back as the emulated clock passes each one's arrival time."""
        n = self.slots_per_frame
        k = 0
        try:
            while True:
                start = k * n
                end = (k + 1) * n
                if run.stop_slot is not None:
                    end = max(start, min(end, run.stop_slot))
                due = run.t_start + end / self.rate_hz + self.delay_s
                if run.stop_slot is None:
                    with trio.CancelScope() as scope:
                        run.wake = scope
                        await self.clock.sleep_until(due)
                    run.wake = None
                    if scope.cancelled_caught:
                        continue  # stopped while waiting: recompute this frame's end
                else:
                    await self.clock.sleep_until(due)
                lag = max(0.0, self.clock.now() - due)
                found = detection.detect_frame(
                    self.rng, run.key, start, end, run.intensities, run.probabilities,
                    self.eta, self.p_dc, self.e_det,
                )
                last = run.stop_slot is not None and end >= run.stop_slot
                await self.deliver(_detection_messages(self.link.name, start, end, found, last))
                self.frames += 1
                self.pulses += end - start
                self.detections += found.slot.size
                if lag > LAG_WARNING_S and lag > 2 * self.lag_worst:
                    log.warning("link %s: %.3f s behind the emulated clock (frame %d); "
                                "no pulse is skipped, detections arrive late", self.link.name,
                                lag, k)
                self.lag_recent = lag
                self.lag_worst = max(self.lag_worst, lag)
                if last:
                    return
                k += 1
        except Exception:  # a bug in one link must not take the daemon down
            log.exception("link %s: source failed", self.link.name)
        finally:
            self.source = None
            run.done.set()

    async def deliver(self, messages: list[p.Detections]) -> None:
        async with self.lock:
            for i, message in enumerate(messages):
                sink = self.sink
                if sink is not None and await sink.send(message):
                    continue
                self.sink = None
                for rest in messages[i:]:
                    self._buffer(rest)
                return

    def _buffer(self, message: p.Detections) -> None:
        self.backlog.append(message)
        self.backlog_records += len(message.outcome)
        while self.backlog_records > MAX_BACKLOG_RECORDS and len(self.backlog) > 1:
            dropped = self.backlog.popleft()
            self.backlog_records -= len(dropped.outcome)
            self.dropped_frames += 1
            log.warning("link %s: receiver never opened; dropped detections %d..%d",
                        self.link.name, dropped.frame_start, dropped.frame_end)

    async def open_detector(self, conn: Connection, reply: p.DetectorOpened) -> None:
        """Reply, flush what was buffered, then route new frames to ``conn``."""
        async with self.lock:
            await conn.send(reply)
            while self.backlog:
                if not await conn.send(self.backlog[0]):
                    return
                self.backlog_records -= len(self.backlog.popleft().outcome)
            self.sink = conn


def _detection_messages(
    link: str, start: int, end: int, found: detection.FrameDetections, last: bool
) -> list[p.Detections]:
    """One frame as one or more Detections covering [start, end) contiguously."""
    m = found.slot.size
    cuts = list(range(0, m, MAX_RECORDS_PER_MESSAGE))[1:]
    bounds = [0, *cuts, m]
    messages = []
    for j in range(len(bounds) - 1):
        i0, i1 = bounds[j], bounds[j + 1]
        messages.append(p.Detections(
            link=link,
            frame_start=start if j == 0 else int(found.slot[i0]),
            frame_end=end if i1 == m else int(found.slot[i1]),
            slot=found.slot[i0:i1].astype("<u8").tobytes(),
            basis=found.basis[i0:i1].tobytes(),
            outcome=found.outcome[i0:i1].tobytes(),
            last=last and i1 == m,
        ))
    return messages


# ---------------------------------------------------------------------------------------------
# State level: heralded pair generation on entanglement links


def heralding_probability(length_km: float, e: LinkEntanglement) -> float:
    """Success probability of one attempt with a midpoint station: each photon crosses
    ``L/2`` of fibre and is detected with ``detector_efficiency``; the linear-optics BSM
    succeeds with ``bsm_efficiency`` (1/2 for Barrett-Kok / single-click schemes):
    ``p = eta_bsm * (eta_d 10^(-alpha L/20))^2`` (Barrett & Kok, PRA 71, 060310 (2005))."""
    arm = e.detector_efficiency * 10.0 ** (-e.attenuation_db_per_km * length_km / 20.0)
    return float(e.bsm_efficiency * arm * arm)


def memory_spec(memory) -> mem.MemorySpec:
    """``NodeMemory`` (scenario, seconds, None = no decay) -> ``MemorySpec``."""
    return mem.MemorySpec(
        slots=memory.slots,
        t1=memory.t1_s if memory.t1_s is not None else math.inf,
        t2=memory.t2_s if memory.t2_s is not None else math.inf,
        cutoff=memory.cutoff_s,
    )


_ONE_QUBIT_GATES = {"I": st.I2, "X": st.X, "Y": st.Y, "Z": st.Z, "H": st.H, "S": st.S,
                    "SDG": st.S.conj().T}
_ROTATIONS = {"RX": st.rx, "RY": st.ry, "RZ": st.rz}
_TWO_QUBIT_GATES = {"CNOT": st.CNOT, "CZ": st.CZ}


def gate_matrix(name: str, angle: float, n_qubits: int,
                axis: tuple[float, float, float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Matrix of a named gate; ``ValueError`` for an unknown name or the wrong qubit count."""
    name = name.upper()
    if name == "ROT":
        if n_qubits != 1 or not np.all(np.isfinite(axis)) or not np.any(axis):
            raise ValueError("ROT needs one qubit and a finite non-zero axis")
        return st.rot(axis, angle)
    if name in _ONE_QUBIT_GATES or name in _ROTATIONS:
        if n_qubits != 1:
            raise ValueError(f"gate {name} acts on one qubit, not {n_qubits}")
        return _ONE_QUBIT_GATES[name] if name in _ONE_QUBIT_GATES else _ROTATIONS[name](angle)
    if name in _TWO_QUBIT_GATES:
        if n_qubits != 2:
            raise ValueError(f"gate {name} acts on two qubits, not {n_qubits}")
        return _TWO_QUBIT_GATES[name]
    raise ValueError(f"unknown gate {name!r}")


class EntanglementLinkRuntime:
    """Heralded generation on one link: attempts at ``attempt_rate_hz``, each heralded with
    ``p``; a success stores a Werner pair (at emission time) in one slot at each end and
    heralds it to both ends one fibre delay later. Generation pauses while either end holds
    ``max_pending`` halves of this link (or has no free slot) and resumes when slots free."""

    def __init__(self, link: DaemonEntanglementLink, daemon: Daemon) -> None:
        e = link.entanglement
        self.link = link
        self.daemon = daemon
        self.clock = daemon.clock
        name_word = int.from_bytes(hashlib.sha256(link.name.encode()).digest()[:8], "little")
        self.rng = np.random.default_rng([daemon.config.seed & 0xFFFFFFFFFFFFFFFF, name_word, 2])
        self.p = heralding_probability(link.length_km, e)
        self.rate_hz = e.attempt_rate_hz
        self.delay_s = link.length_km * FIBRE_GROUP_DELAY_S_PER_KM
        self.coeffs = st.werner_coefficients(e.source_fidelity)
        self.ends = (link.a, link.b)
        self.held = {link.a: 0, link.b: 0}
        self.limit = {end: daemon.share(end) for end in self.ends}
        self.inbox: dict[str, deque[p.DeliveredPair]] = {end: deque() for end in self.ends}
        self.arrived = {end: trio.Event() for end in self.ends}
        self.in_flight: deque[tuple[float, int, mem.SlotRef, mem.SlotRef, float]] = deque()
        self.flight_event = trio.Event()
        self.scope: trio.CancelScope | None = None
        self.generated = 0

    def has_room(self) -> bool:
        memories = self.daemon.memories
        return all(self.held[e] < self.limit[e] and memories.free_slots(e) > 0
                   for e in self.ends)

    def start(self, node: str, max_pending: int) -> None:
        """Start (idempotent); ``max_pending`` > 0 caps the halves ``node`` holds at a time."""
        if max_pending > 0:
            self.limit[node] = min(max_pending, self.daemon.share(node))
        if self.scope is None:
            assert self.daemon.nursery is not None
            self.scope = trio.CancelScope()
            self.daemon.nursery.start_soon(self._run, self.scope)

    def stop(self) -> None:
        if self.scope is not None:
            self.scope.cancel()
            self.scope = None

    async def _run(self, scope: trio.CancelScope) -> None:
        with scope:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._deliver)
                    await self._generate()
            except Exception:  # a bug in one link must not take the daemon down
                log.exception("entanglement link %s failed", self.link.name)

    async def _generate(self) -> None:
        t = self.clock.now()  # attempts happen from here on
        while True:
            while not self.has_room():
                await self.daemon.slots_freed()
                t = max(t, self.clock.now())
            t_emit = t + float(self.rng.geometric(self.p)) / self.rate_hz
            await self.clock.sleep_until(t_emit)
            t = t_emit
            self.daemon.expire(self.clock.now())
            if not self.has_room():
                continue  # another user took the last slot while we waited
            ref_a, ref_b = self.daemon.memories.store_pair(*self.ends, self.coeffs, t_emit)
            pair = self.daemon.new_pair_id()
            self.daemon.slot_owner[ref_a] = (self, pair)
            self.daemon.slot_owner[ref_b] = (self, pair)
            self.held[ref_a.node] += 1
            self.held[ref_b.node] += 1
            self.generated += 1
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
                owner = self.daemon.slot_owner.get(ref)
                if owner is None or owner[1] != pair:
                    continue  # lost before the herald arrived (cutoff)
                self.inbox[ref.node].append(p.DeliveredPair(pair, ref.slot, t_emit, t_herald))
                self.arrived[ref.node].set()

    def _prune(self, node: str) -> int:
        """Drop heralded halves lost since (cutoff); returns how many are left."""
        box = self.inbox[node]
        owner = self.daemon.slot_owner
        if any(owner.get(mem.SlotRef(node, x.slot), (0, -1))[1] != x.pair for x in box):
            kept = [x for x in box if owner.get(mem.SlotRef(node, x.slot), (0, -1))[1] == x.pair]
            box.clear()
            box.extend(kept)
        return len(box)

    async def await_pairs(self, conn: Connection, request: p.PairAwait) -> None:
        """Reply to a long poll once pairs are there (or empty at the timeout)."""
        node = conn.node
        assert node is not None
        box = self.inbox[node]
        self.daemon.expire(self.clock.now())
        with trio.move_on_after(max(0.0, request.timeout_s) / self.clock.time_scale):
            while not self._prune(node):
                if self.arrived[node].is_set():
                    self.arrived[node] = trio.Event()
                await self.arrived[node].wait()
        self._prune(node)
        n = min(len(box), max(1, request.max))
        pairs = [box.popleft() for _ in range(n)]
        peer = self.link.b if node == self.link.a else self.link.a
        await conn.send(p.PairsDelivered(request.id, self.link.name, peer, pairs))


class _Fatal(Exception):
    def __init__(self, error: p.Error) -> None:
        self.error = error


class Daemon:
    """State shared by all connections: links, clock, and per-node sent-message counters."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.clock = EmulatedClock(config.t0, config.time_scale)
        self.links = {link.name: LinkRuntime(link, config.seed, self.clock) for link in config.links}
        self.sent_by_node: defaultdict[str, Counter] = defaultdict(Counter)
        self.connections: list[Connection] = []
        self.port = 0
        self.nursery: trio.Nursery | None = None
        # state level
        self.memories = mem.QuantumMemories(
            {node: memory_spec(m) for node, m in config.memories.items()})
        self.state_rng = np.random.default_rng([config.seed & 0xFFFFFFFFFFFFFFFF, 4])
        self.slot_owner: dict[mem.SlotRef, tuple[EntanglementLinkRuntime, int]] = {}
        self._freed = trio.Event()
        self._pair_ids = 0
        self.pairs_expired = 0
        self._links_at: Counter[str] = Counter()
        for link in config.entanglement_links:
            self._links_at[link.a] += 1
            self._links_at[link.b] += 1
        self.entanglement = {link.name: EntanglementLinkRuntime(link, self)
                             for link in config.entanglement_links}

    # -- state level ----------------------------------------------------------------------------

    def share(self, node: str) -> int:
        """Slots of ``node`` one of its entanglement links may hold (an even split)."""
        slots = self.memories.spec(node).slots if node in self.config.memories else 0
        return max(1, slots // max(1, self._links_at[node]))

    def new_pair_id(self) -> int:
        self._pair_ids += 1
        return self._pair_ids

    async def slots_freed(self) -> None:
        await self._freed.wait()

    def freed(self, refs) -> None:
        """Slots were freed (measured, discarded, expired): update link holdings, wake waiters."""
        for ref in refs:
            owner = self.slot_owner.pop(ref, None)
            if owner is not None:
                owner[0].held[ref.node] -= 1
        self._freed.set()
        self._freed = trio.Event()

    def expire(self, now: float) -> None:
        for expired in self.memories.expire(now):
            self.pairs_expired += 1
            self.freed(expired.refs)

    def memory_stats(self, request_id: int) -> p.MemoryStats:
        return p.MemoryStats(
            id=request_id,
            measurements=dict(self.memories.measurements),
            pairs_generated={name: x.generated for name, x in self.entanglement.items()},
            pairs_expired=self.pairs_expired,
            free_slots={n: self.memories.free_slots(n) for n in self.config.memories},
        )

    def _state_op(self, conn: Connection, request) -> msgspec.Struct:
        """One state-level operation on ``conn.node``'s own qubits (never another node's)."""
        node = conn.node
        assert node is not None
        if node not in self.config.memories:
            return p.Error("not_allowed", f"node {node!r} has no quantum memory", id=request.id)
        now = self.clock.now()
        self.expire(now)
        memories = self.memories
        try:
            if isinstance(request, p.QubitPrepare):
                c, s_ = math.cos(request.theta / 2), math.sin(request.theta / 2)
                psi = np.array([c, complex(math.cos(request.phi), math.sin(request.phi)) * s_])
                (ref,) = memories.store_density([node], st.density(psi), now)
                return p.Prepared(request.id, p.QubitRef(ref.node, ref.slot), now)
            refs = [mem.SlotRef(q.node, q.slot) for q in _qubits_of(request)]
            for ref in refs:
                if ref.node != node:
                    raise mem.NotOwner(node, ref)
            if isinstance(request, p.QubitGate):
                if len(set(refs)) != len(refs):
                    raise ValueError("a gate needs distinct qubits")
                matrix = gate_matrix(request.gate, request.angle, len(refs), request.axis)
                if len(refs) == 1 and request.gate.upper() in ("I", "X", "Y", "Z"):
                    memories.apply_pauli(node, refs[0], request.gate.upper(), now)
                else:
                    memories.apply_gate(node, refs, matrix, now)
                return p.Done(request.id, now)
            if isinstance(request, p.QubitMeasure):
                bases = request.bases * len(refs) if len(request.bases) == 1 else request.bases
                if len(bases) != len(refs) or any(b not in ("X", "Y", "Z") for b in bases):
                    raise ValueError("give one basis (X, Y or Z) per qubit, or one for all")
                if len(set(refs)) != len(refs):
                    raise ValueError("a qubit appears twice")
                out = bytearray()
                for ref, basis in zip(refs, bases):
                    out.append(memories.measure(node, ref, basis, now, self.state_rng))
                    self.freed([ref])
                return p.Measured(request.id, bytes(out), now)
            if isinstance(request, p.BellMeasure):
                m1, m2 = memories.bell_measure(node, refs[0], refs[1], now, self.state_rng)
                self.freed(refs)
                return p.BellResult(request.id, m1, m2, now)
            # QubitDiscard
            for ref in refs:
                memories.discard(node, ref, now)
                self.freed([ref])
            return p.Done(request.id, now)
        except mem.NotOwner as exc:
            return p.Error("not_allowed", str(exc), id=request.id)
        except mem.NoFreeSlot as exc:
            return p.Error("no_free_slot", str(exc), id=request.id)
        except mem.CutoffExpired as exc:
            self.pairs_expired += 1
            self.freed(exc.expired.refs)
            return p.Error("expired", str(exc), id=request.id)
        except mem.EmptySlot as exc:
            return p.Error("empty_slot", str(exc), id=request.id)
        except mem.RegisterTooLarge as exc:
            return p.Error("too_large_register", str(exc), id=request.id)
        except ValueError as exc:
            return p.Error("bad_request", str(exc), id=request.id)

    def _entanglement_request(self, conn: Connection, request) -> msgspec.Struct | None:
        link = self.entanglement.get(request.link)
        if link is None:
            return p.Error("unknown", f"unknown entanglement link {request.link!r}",
                           id=request.id)
        if conn.node not in link.ends:
            return p.Error("not_allowed", f"{conn.node!r} is not an end of {request.link!r}",
                           id=request.id)
        if isinstance(request, p.EntangleStart):
            if request.max_pending < 0:
                return p.Error("bad_request", "max_pending must be >= 0", id=request.id)
            link.start(conn.node, request.max_pending)
            return p.EntangleStarted(request.id, request.link, link.p, link.rate_hz,
                                     link.delay_s, link.limit[conn.node])
        if isinstance(request, p.EntangleStop):
            link.stop()
            return p.Done(request.id, self.clock.now())
        assert conn.nursery is not None
        conn.nursery.start_soon(link.await_pairs, conn, request)
        return None

    def stats(self, request_id: int) -> p.Stats:
        links = self.links.values()
        return p.Stats(
            id=request_id,
            lag_s=max((x.lag_worst for x in links), default=0.0),
            frames=sum(x.frames for x in links),
            pulses=sum(x.pulses for x in links),
            detections=sum(x.detections for x in links),
            lag_recent_s=max((x.lag_recent for x in links), default=0.0),
            dropped_frames=sum(x.dropped_frames for x in links),
            cpu_s=time.process_time(),
        )

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one node connection; never raises (a broken peer costs only itself)."""
        framed = FramedStream(stream, p.MAX_FRAME)
        conn = Connection(framed, self.sent_by_node)
        self.connections.append(conn)
        try:
            async with stream:
                try:
                    await self._converse(conn)
                except _Fatal as fatal:
                    log.info("closing %s: %s", conn.node or "unauthenticated", fatal.error.message)
                    await conn.send(fatal.error)
                    await _close_gracefully(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # a bug must not take the daemon down with it
            log.exception("connection of %s failed", conn.node)
        finally:
            conn.closed = True
            for link in self.links.values():
                if link.source is not None and link.source.owner is conn:
                    link.request_stop()
                if link.sink is conn:
                    link.sink = None

    async def _receive(self, conn: Connection) -> p.Request | None:
        try:
            payload = await conn.framed.receive()
        except FrameTooLarge as exc:
            raise _Fatal(p.Error("too_large", str(exc), fatal=True)) from None
        if payload is None:
            return None
        try:
            return p.request_decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise _Fatal(p.Error("bad_frame", f"not a request: {exc}", fatal=True)) from None

    async def _converse(self, conn: Connection) -> None:
        with trio.move_on_after(HELLO_TIMEOUT_S):
            hello = await self._receive(conn)
            if hello is None:
                return
            self._authenticate(conn, hello)
            await conn.send(p.Welcome(p.PROTOCOL_VERSION, conn.node, self.config.t0,
                                      self.config.time_scale))
        if conn.node is None:
            raise _Fatal(p.Error("unauthenticated", "no hello in time", fatal=True))
        pending: BaseException | None = None
        async with trio.open_nursery() as polls:  # this connection's long polls
            conn.nursery = polls
            try:
                while True:
                    request = await self._receive(conn)
                    if request is None:
                        break
                    reply = await self._dispatch(conn, request)
                    if reply is not None:
                        await conn.send(reply)
            except (_Fatal, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                pending = exc  # re-raised outside the nursery, unwrapped
            polls.cancel_scope.cancel()
        if pending is not None:
            raise pending

    def _authenticate(self, conn: Connection, hello: p.Request) -> None:
        if not isinstance(hello, p.Hello):
            raise _Fatal(p.Error("unauthenticated", "the first frame must be hello",
                                 id=getattr(hello, "id", None), fatal=True))
        if hello.version != p.PROTOCOL_VERSION:
            raise _Fatal(p.Error("bad_version", f"daemon speaks version {p.PROTOCOL_VERSION}, "
                                 f"not {hello.version}", fatal=True))
        expected = self.config.tokens.get(hello.node)
        # compare against something even for unknown nodes, so timing does not tell them apart
        ok = hmac.compare_digest((expected or "\x00" * 32).encode(), hello.token.encode())
        if expected is None or not ok:
            raise _Fatal(p.Error("unauthenticated", "unknown node or wrong token", fatal=True))
        conn.node = hello.node

    async def _dispatch(self, conn: Connection, request: p.Request) -> msgspec.Struct | None:
        if isinstance(request, p.Hello):
            return p.Error("not_allowed", "already authenticated")
        if isinstance(request, p.StatsRequest):
            return self.stats(request.id)
        if isinstance(request, p.MemoryStatsRequest):
            return self.memory_stats(request.id)
        if isinstance(request, _STATE_OPS):
            return self._state_op(conn, request)
        if isinstance(request, (p.EntangleStart, p.EntangleStop, p.PairAwait)):
            return self._entanglement_request(conn, request)
        link = self.links.get(request.link)
        if link is None:
            return p.Error("unknown", f"unknown quantum link {request.link!r}", id=request.id)
        role = "a" if isinstance(request, (p.SourceStart, p.SourceStop)) else "b"
        if getattr(link.link, role) != conn.node:
            return p.Error("not_allowed", f"only {getattr(link.link, role)!r} may send "
                           f"{type(request).__struct_config__.tag} on {request.link!r}",
                           id=request.id)
        if isinstance(request, p.SourceStart):
            return self._start(conn, link, request)
        if isinstance(request, p.SourceStop):
            run = link.source
            if run is None:
                return p.Error("not_allowed", "the source is not running", id=request.id)
            link.request_stop()
            await run.done.wait()
            return p.SourceStopped(request.id, request.link, run.stop_slot or 0)
        await link.open_detector(conn, p.DetectorOpened(request.id, request.link))
        return None

    def _start(self, conn: Connection, link: LinkRuntime, request: p.SourceStart) -> p.Reply:
        if link.source is not None:
            return p.Error("not_allowed", "the source is already running", id=request.id)
        intensities = request.intensities or [link.link.quantum.source.mu]
        probabilities = request.probabilities or ([1.0] if not request.intensities else [])
        try:
            if len(intensities) != len(probabilities) or min(intensities) < 0:
                raise ValueError("intensities must be >= 0, one probability each")
            intensity_thresholds(probabilities)
        except ValueError as exc:
            return p.Error("bad_request", str(exc), id=request.id)
        run = SourceRun(bytes(request.prf_key), list(intensities), list(probabilities),
                        self.clock.now(), conn)
        link.source = run
        assert self.nursery is not None
        self.nursery.start_soon(link.run_source, run)
        return p.SourceStarted(request.id, request.link, run.t_start, link.rate_hz,
                               run.intensities, run.probabilities, link.slots_per_frame)


_STATE_OPS = (p.QubitPrepare, p.QubitGate, p.QubitMeasure, p.BellMeasure, p.QubitDiscard)


def _qubits_of(request) -> list[p.QubitRef]:
    if isinstance(request, p.BellMeasure):
        if request.q1 == request.q2:
            raise ValueError("Bell measurement needs two different qubits")
        return [request.q1, request.q2]
    return list(request.qubits)


async def _close_gracefully(stream: trio.SocketStream) -> None:
    """Half-close and drain briefly, so unread input does not turn our close into a reset
    that would discard the Error frame before the peer reads it."""
    with trio.move_on_after(CLOSE_DRAIN_S):
        try:
            await stream.send_eof()
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def serve(config: DaemonConfig, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``config.host`` (port 0) and serve until cancelled; started with the Daemon."""
    daemon = Daemon(config)
    listeners = await trio.open_tcp_listeners(0, host=config.host)
    for extra in listeners[1:]:
        await extra.aclose()
    listener = listeners[0]
    daemon.port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        daemon.nursery = nursery
        task_status.started(daemon)
        await trio.serve_listeners(daemon.handle, [listener], handler_nursery=nursery)
