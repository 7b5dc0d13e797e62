"""Flying-qubit link runtime: photonic qubits a node sends through a fibre to its neighbour.

A ``QubitSend`` moves the sender's qubit out of its memory into the fibre (a slot of the
``FLIGHT`` pseudo-node, so it stays entangled with what it was entangled with); a
``QubitPrepareSend`` prepares a known state straight into it. Crossing the
fibre it meets the fibre's rotation U(t) (``polarisation.drift_step``, one walk per fibre and
direction, U = I when the first payload crosses it: its calibration), its loss (and the far
end's delay line's), and Raman photons that travel with it and depolarise it when stored
(``physics.flight.noise_at_destination``).
It arrives one fibre delay later: at a node with a delay line (``switch_budget_us`` > 0) it
waits for ``PayloadSwitch`` until its spool ends, else it is lost as *late*; at any other node
it is stored in memory. A cut or degraded quantum plane and Raman noise from the measured
classical traffic come from the daemon's ``link_states`` (``emulator.daemon.traffic``). The
receiving end gets ``PayloadArrived`` with a noisy readout of U
(``polarisation.gaussian_estimate``): a router may switch and rotate, never measure. Times
are emulated (``EmulatedClock``), so a router's real latency counts against its budget.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import trio

from emulator.batches import batches
from emulator.daemon import memories as mem
from emulator.daemon import ops
from emulator.daemon import protocol as p
from emulator.daemon.links import LinkHost, LinkRuntime, Reply, name_word, not_allowed
from emulator.daemon.session import Connection
from emulator.hybrid_config import FlightFibre, NodeHybrid
from emulator.physics import polarisation as pol
from emulator.physics import states as st
from emulator.physics.channels import fibre_delay, transmittance

FLIGHT = "~flight"  # memories pseudo-node holding the qubits in fibres and delay lines
FLIGHT_SLOTS = 100_000
PUSH_BUFFER = 10_000  # PayloadArrived queued per receiving connection before drops
PUSH_BATCH = 256  # PayloadArrived in one PayloadsArrived frame at most (~30 kB)
LATE_MEMORY = 10_000  # payloads lost as late whose late switch is still answered "late"


def rotation_vector(u: np.ndarray) -> tuple[float, float, float]:
    """Rotation vector theta n (|theta| <= pi) of SU(2) ``u = cos(theta/2) I - i sin(theta/2)
    n.sigma`` up to its sign: what a node needs to undo it with a waveplate. With
    Tr(U sigma_k) = -2i sin(theta/2) n_k: Tr(U X) = u01 + u10, Tr(U Y) = i (u01 - u10),
    Tr(U Z) = u00 - u11 (scalar arithmetic: this runs per payload and hop)."""
    (a, b), (c, d) = u.tolist()
    w = (a + d).real / 2
    v = (-(b + c).imag / 2, -(b - c).real / 2, -(a - d).imag / 2)
    if w < 0:
        w, v = -w, (-v[0], -v[1], -v[2])
    norm = math.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2)
    if norm == 0.0:
        return (0.0, 0.0, 0.0)
    k = 2 * math.atan2(norm, w) / norm
    return (v[0] * k, v[1] * k, v[2] * k)


@dataclass
class Payload:
    """One qubit in a fibre or a delay line; only the daemon sees this."""

    id: int
    ref: mem.SlotRef  # its slot at FLIGHT
    at: str  # the node it is travelling to, or sits at
    link: str  # the fibre it is crossing or arrived on
    noise: float = 0.0  # Raman photons per gate travelling with it
    in_spool: bool = False
    deadline: float = 0.0
    u: np.ndarray | None = None  # the rotation of the fibre it crossed last
    src: str = ""  # the end it left from, on the fibre it is crossing
    depart: float = 0.0  # emulated time it entered that fibre


@dataclass
class FlightPlane:
    """State shared by every flight fibre of the daemon: payloads, events, per-node counts.

    Two timer queues, serviced by one task (``run``) in one time-ordered pass: ``events``, one
    entry per fibre crossing, due at the payload's (would-be) arrival; ``spools``, one per
    payload entering a delay line, due at its spool end, which matters only if no switch was
    set by then (late). A payload switched in time leaves at its spool end without a timer of
    its own: the switch schedules its next arrival at once (``launch`` at the deadline)."""

    host: LinkHost
    hybrid: dict[str, NodeHybrid]
    links: dict[str, FlightLinkRuntime] = field(default_factory=dict)
    payloads: dict[int, Payload] = field(default_factory=dict)
    events: list[tuple[float, int, int]] = field(default_factory=list)  # (t, order, payload)
    spools: list[tuple[float, int, int]] = field(default_factory=list)  # (deadline, order, id)
    counts: Counter[str] = field(default_factory=Counter)  # "<node>.<what>"
    push: dict[tuple[str, str], trio.MemorySendChannel] = field(default_factory=dict)
    late: dict[int, tuple[str, float]] = field(default_factory=dict)  # recent: node, deadline

    def __post_init__(self) -> None:
        self.rng = self.host.rng(name_word("flight"), 6)
        self.ids = itertools.count(1)
        self.order = itertools.count()
        self.wake = trio.Event()
        self.wake_at = -math.inf  # the emulated time ``run`` sleeps until (-inf: not asleep)
        self._spool_survival: dict[str, float] = {}

    def budget(self, node: str) -> NodeHybrid:
        return self.hybrid.get(node, NodeHybrid())

    def spool_survival(self, node: str) -> float:
        """Transmittance of ``node``'s whole delay line, 10^(-dB/us x budget / 10)."""
        survival = self._spool_survival.get(node)
        if survival is None:
            end = self.budget(node)
            survival = 10.0 ** (-end.delay_line_db_per_us * end.switch_budget_us / 10.0)
            self._spool_survival[node] = survival
        return survival

    def schedule(self, t: float, payload: int) -> None:
        """A crossing of ``payload`` that ends (arrival or loss) at ``t``; wakes ``run`` only
        when that is before what it sleeps until."""
        heapq.heappush(self.events, (t, next(self.order), payload))
        if t < self.wake_at:
            self.wake.set()

    def _first_spool(self) -> float:
        """The deadline of the first payload still undecided in a delay line (inf if none);
        entries of payloads switched, stored or gone since are dropped on the way."""
        spools, payloads = self.spools, self.payloads
        while spools:
            deadline, _, pid = spools[0]
            payload = payloads.get(pid)
            if payload is not None and payload.in_spool and payload.deadline == deadline:
                return deadline
            heapq.heappop(spools)
        return math.inf

    def due(self, now: float) -> None:
        """Handle every crossing and undecided spool end due by ``now``, in time order."""
        events, spools, payloads = self.events, self.spools, self.payloads
        while True:
            t_event = events[0][0] if events else math.inf
            t_spool = self._first_spool()
            if t_event <= t_spool:
                if t_event > now:
                    return
                _, _, pid = heapq.heappop(events)
                payload = payloads.get(pid)
                if payload is not None:
                    self._cross(payload, t_event)
            else:
                if t_spool > now:
                    return
                _, _, pid = heapq.heappop(spools)
                self._late(payloads[pid], t_spool)

    async def run(self) -> None:
        """The payloads' events at their emulated times, every event due at once in one pass;
        the daemon runs it for the whole run when it has flight fibres."""
        clock = self.host.clock
        while True:
            self.due(clock.now())
            self.wake = trio.Event()
            t_next = min(self.events[0][0] if self.events else math.inf, self._first_spool())
            self.wake_at = t_next
            if t_next < math.inf:
                with trio.move_on_at(clock.deadline(t_next)):
                    await self.wake.wait()
            else:
                await self.wake.wait()
            self.wake_at = -math.inf

    # -- the payload's life -------------------------------------------------------------------

    def launch(self, payload: Payload, link: FlightLinkRuntime, t: float) -> None:
        """``payload`` enters ``link``'s fibre at ``t`` (now, or a switched payload's spool
        end); what the fibre does to it is applied at its arrival (``_cross``)."""
        src = payload.at
        payload.src, payload.depart = src, t
        payload.at, payload.link = link.other(src), link.name
        payload.in_spool = False
        self.counts[link.sent_key] += 1
        self.schedule(t + link.delay_s, payload.id)

    def _cross(self, payload: Payload, t: float) -> None:
        """The end of a crossing at ``t``: the fibre's rotation at the departure (its walk is
        advanced in departure order, since a fibre's crossings end in that order), its loss
        with the far end's delay line's, the Raman photons; then the arrival or the loss."""
        link = self.links[payload.link]
        depart = payload.depart
        u = payload.u = link.advance(payload.src, depart)
        if link.fibre.flight.diffusion_rad2_per_s > 0:  # else U = I for ever: nothing to do
            self.host.memories.apply_gate(FLIGHT, [payload.ref], u, t)
        spool = self.spool_survival(payload.at)
        state = link.state  # quantum-plane faults and the measured classical traffic
        setting = state.now
        if setting.t > depart:  # changed while it crossed: what held when it entered
            setting = state.at(depart)
        t_fibre = link.transmittance * setting.factor
        noise = link.fibre.flight.noise_photons
        if state.raman is not None:
            noise += state.noise_photons(efficiency=1.0, setting=setting)
        payload.noise = (payload.noise * t_fibre + noise) * spool
        if self.rng.random() < t_fibre * spool:
            self._arrive(payload, t)
        else:  # known lost at its would-be arrival (the push goes then)
            self._fibre_lost(payload, t)

    def _lost(self, payload: Payload, t: float, why: str) -> None:
        self.host.memories.discard(FLIGHT, payload.ref, t)
        del self.payloads[payload.id]
        self.counts[f"{payload.at}.{why}"] += 1

    def _fibre_lost(self, payload: Payload, t: float) -> None:
        self._lost(payload, t, "lost_in_fibre")
        self._notify(payload.at, p.PayloadArrived(payload.link, payload.id, t, False))

    def _arrive(self, payload: Payload, t: float) -> None:
        link = self.links[payload.link]
        sigma = link.fibre.flight.estimation_sigma_rad
        u_hat = pol.gaussian_estimate(payload.u, sigma, self.rng) if sigma > 0 else payload.u
        reference = rotation_vector(u_hat)
        end = self.budget(payload.at)
        if end.switch_budget_us > 0:
            payload.in_spool = True
            payload.deadline = t + end.switch_budget_us * 1e-6
            heapq.heappush(self.spools, (payload.deadline, next(self.order), payload.id))
            self.counts[f"{payload.at}.arrived"] += 1
            self._notify(payload.at, p.PayloadArrived(payload.link, payload.id, t, True, -1,
                                                      payload.deadline, reference))
            return
        slot = self.store(payload, t)
        self._notify(payload.at, p.PayloadArrived(payload.link, payload.id, t, slot is not None,
                                                  -1 if slot is None else slot, t, reference))

    def store(self, payload: Payload, t: float) -> int | None:
        """Put ``payload`` into a memory slot of the node it is at, after the depolarising
        of the Raman photons it carried (sampled); its slot, or None (lost: no free slot)."""
        p_dep = -math.expm1(-payload.noise / 2)
        if p_dep > 0 and self.rng.random() < p_dep * 3 / 4:  # a sampled depolarising channel
            pauli = st.PAULIS["XYZ"[int(self.rng.integers(3))]]
            self.host.memories.apply_gate(FLIGHT, [payload.ref], pauli, t)
        try:
            ref = self.host.memories.move(payload.ref, payload.at, t)
        except mem.NoFreeSlot:
            self._lost(payload, t, "no_free_slot")
            return None
        del self.payloads[payload.id]
        self.counts[f"{payload.at}.stored"] += 1
        return ref.slot

    def _late(self, payload: Payload, t: float) -> None:
        """The spool of ``payload`` ended at ``t`` with no switch set: lost as late."""
        self._lost(payload, t, "late")
        self.late[payload.id] = (payload.at, payload.deadline)  # to answer a late switch
        while len(self.late) > LATE_MEMORY:
            del self.late[next(iter(self.late))]

    def _notify(self, node: str, message: p.PayloadArrived) -> None:
        channel = self.push.get((message.link, node))
        if channel is None:
            self.counts[f"{node}.unheard"] += 1
            return
        try:
            channel.send_nowait(message)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.counts[f"{node}.dropped_pushes"] += 1


class FlightLinkRuntime(LinkRuntime):
    """One fibre that carries flying qubits; its state lives in the shared ``FlightPlane``."""

    kind = "flight"
    requests = {p.FlightOpen: "flight_open", p.QubitSend: "qubit_send",
                p.QubitPrepareSend: "qubit_prepare_send", p.PayloadSwitch: "payload_switch",
                p.PayloadStore: "payload_store"}

    def __init__(self, fibre: FlightFibre, plane: FlightPlane) -> None:
        self.fibre = fibre
        self.name = fibre.name
        self.sent_key = f"{fibre.name}.sent"
        self.ends = (fibre.a, fibre.b)
        self.plane = plane
        self.delay_s = float(fibre_delay(fibre.length_km))
        self.transmittance = float(transmittance(fibre.length_km,
                                                 fibre.flight.attenuation_db_per_km))
        self.rng = plane.host.rng(name_word(fibre.name), 6)
        # shared with the link's photon runtime, if it has one (so its Raman config counts)
        self.state = plane.host.link_states.get(fibre.name)
        self.u = {end: np.eye(2, dtype=complex) for end in self.ends}  # by the sending end
        self.walked_to: dict[str, float | None] = dict.fromkeys(self.ends)
        plane.links[fibre.name] = self

    def other(self, node: str) -> str:
        return self.ends[1] if node == self.ends[0] else self.ends[0]

    def advance(self, src: str, t: float) -> np.ndarray:
        """The rotation of the fibre from ``src`` at ``t`` (its walk advanced, never back)."""
        if self.walked_to[src] is None:  # calibrated (U = I) as the first payload crosses
            self.walked_to[src] = t
        dt = t - self.walked_to[src]
        if dt > 0:
            self.u[src] = pol.drift_step(self.u[src], dt, self.fibre.flight.diffusion_rad2_per_s,
                                         self.rng)
            self.walked_to[src] = t
        return self.u[src]

    def counters(self) -> dict[str, float]:
        return {"payloads_sent": self.plane.counts[f"{self.name}.sent"]}

    def connection_closed(self, conn: Connection) -> None:
        for end in self.ends:
            if end == conn.node:
                self.plane.push.pop((self.name, end), None)

    # -- requests -------------------------------------------------------------------------------

    async def flight_open(self, conn: Connection, request: p.FlightOpen) -> Reply:
        send, receive = trio.open_memory_channel(PUSH_BUFFER)
        old = self.plane.push.get((self.name, conn.node))
        if old is not None:  # opened again: the previous pump ends
            old.close()
        self.plane.push[(self.name, conn.node)] = send
        conn.spawn(self._pump, conn, receive)
        return p.Done(request.id, self.plane.host.clock.now())

    @staticmethod
    async def _pump(conn: Connection, receive: trio.MemoryReceiveChannel) -> None:
        """Send the link's pushes to ``conn``: those queued meanwhile in one frame."""
        async with receive:
            async for batch in batches(receive, PUSH_BATCH):
                out = batch[0] if len(batch) == 1 else p.PayloadsArrived(batch[0].link, batch)
                if not await conn.send(out):
                    return

    async def qubit_send(self, conn: Connection, request: p.QubitSend) -> Reply:
        node = conn.node
        assert node is not None
        ref = mem.SlotRef(request.qubit.node, request.qubit.slot)
        if ref.node != node:
            return not_allowed(request, f"{node!r} may send only its own qubits")
        plane, now = self.plane, self.plane.host.clock.now()
        plane.host.expire()
        try:
            flying = plane.host.memories.move(ref, FLIGHT, now)
        except mem.CutoffExpired:
            return p.Error("expired", f"slot {ref.slot} passed its cutoff", id=request.id)
        except mem.EmptySlot as exc:
            return p.Error("empty_slot", str(exc), id=request.id)
        return self._send(request, node, flying, now)

    async def qubit_prepare_send(self, conn: Connection, request: p.QubitPrepareSend) -> Reply:
        """Prepare the known state straight into the fibre (no memory slot of the sender's:
        a photon source, not a stored qubit sent), as ``QubitPrepare`` then ``QubitSend``."""
        node = conn.node
        assert node is not None
        now = self.plane.host.clock.now()
        rho = ops.pure_density(request.theta, request.phi)
        try:
            (flying,) = self.plane.host.memories.store_density([FLIGHT], rho, now)
        except mem.NoFreeSlot as exc:
            return p.Error("no_free_slot", str(exc), id=request.id)
        return self._send(request, node, flying, now)

    def _send(self, request, node: str, flying: mem.SlotRef, now: float) -> p.Sent:
        plane = self.plane
        payload = Payload(next(plane.ids), flying, node, self.name)
        plane.payloads[payload.id] = payload
        plane.counts[f"{node}.sends"] += 1
        plane.launch(payload, self, now)
        return p.Sent(request.id, self.name, payload.id, now)

    async def payload_switch(self, conn: Connection, request: p.PayloadSwitch) -> Reply:
        now = self.plane.host.clock.now()  # the instant judged against the deadline
        payload = self._held(conn, request, now)
        if not isinstance(payload, Payload):
            return payload
        plane, node, deadline = self.plane, conn.node, payload.deadline
        plane.counts[f"{node}.switches"] += 1
        plane.launch(payload, self, deadline)  # it leaves at its spool end
        return p.Switched(request.id, payload.id, now, deadline)

    async def payload_store(self, conn: Connection, request: p.PayloadStore) -> Reply:
        """The payload is for this node: out of its delay line into a memory slot now."""
        held = self.plane.payloads.get(request.payload)
        if held is not None and held.at == conn.node and held.link != self.name:
            return not_allowed(request, f"payload {held.id} arrived on {held.link!r}")
        now = self.plane.host.clock.now()
        payload = self._held(conn, request, now)
        if not isinstance(payload, Payload):
            return payload
        slot = self.plane.store(payload, now)
        if slot is None:
            return p.Error("no_free_slot", f"{conn.node!r} has no free slot", id=request.id)
        return p.Stored(request.id, request.payload, slot, now)

    def _held(self, conn: Connection, request, now: float) -> Payload | p.Error:
        """The payload ``request`` names if it sits undecided in ``conn.node``'s delay line and
        the budget still runs at ``now`` (the waveplate applied), else the refusal."""
        node = conn.node
        plane = self.plane
        payload = plane.payloads.get(request.payload)
        late = plane.late.get(request.payload)
        if payload is None and late is not None and late[0] == node:
            plane.counts[f"{node}.late_decisions"] += 1
            return p.Error("late", f"payload {request.payload} left the delay line at "
                                   f"{late[1]:.6f} s, switch set at {now:.6f} s", id=request.id,
                           t=now)
        if payload is None or payload.at != node or not payload.in_spool:
            plane.counts[f"{node}.refused"] += 1
            return not_allowed(request, f"{node!r} holds no payload {request.payload} in its "
                                        f"delay line")
        if now > payload.deadline:
            plane.counts[f"{node}.late_decisions"] += 1
            return p.Error("late", f"payload {payload.id} left the delay line at "
                                   f"{payload.deadline:.6f} s, switch set at {now:.6f} s",
                           id=request.id, t=now)
        if request.rotation is not None:
            r = np.asarray(request.rotation, dtype=np.float64)
            if not np.all(np.isfinite(r)):
                return p.Error("bad_request", "rotation must be finite", id=request.id)
            plane.host.memories.apply_gate(FLIGHT, [payload.ref], pol.su2(r), now)
            plane.counts[f"{node}.rotations"] += 1
        return payload
