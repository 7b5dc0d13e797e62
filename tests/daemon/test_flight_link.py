"""Flying qubits through the daemon over real TCP: alice -> router r1 -> bob on two fibres with
loss, drift and Raman noise; the router switches (and compensates) from the pushed readouts.
Delivered fractions and fidelities against ``physics.flight.flow_model`` within 4 standard
errors (binomial, plus the model's run-to-run spread); late switches, refusals and routers
that cannot measure."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import trio

from emulator.child_config import DaemonConfig
from emulator.daemon import protocol as p
from emulator.daemon.links.flight import FLIGHT, rotation_vector
from emulator.daemon.server import serve
from emulator.hybrid_config import FlightFibre, LinkFlight, NodeHybrid, path_hops
from emulator.physics import flight, polarisation
from emulator.scenario import NodeMemory
from nodes.daemon_client import DaemonError, open_daemon

TOKENS = {"alice": "tok-a", "r1": "tok-r", "bob": "tok-b"}
# the six Bloch axis states (theta, phi) and the basis/outcome that finds them
STATES = [((0.0, 0.0), "Z", 0), ((math.pi, 0.0), "Z", 1), ((math.pi / 2, 0.0), "X", 0),
          ((math.pi / 2, math.pi), "X", 1), ((math.pi / 2, math.pi / 2), "Y", 0),
          ((math.pi / 2, 3 * math.pi / 2), "Y", 1)]


def make_config(compensate: bool, diffusion: float, sigma: float = 0.2,
                budget_us: float = 50_000.0, noise: float = 0.05,
                attenuation: float = 0.2, line_db_per_us: float = 2e-5) -> DaemonConfig:
    fibre = LinkFlight(attenuation_db_per_km=attenuation, diffusion_rad2_per_s=diffusion,
                       estimation_sigma_rad=sigma, noise_photons=noise)
    memory = NodeMemory(slots=4096)
    return DaemonConfig(
        "test", time.monotonic(), 1.0, 11, dict(TOKENS), [],
        memories={"alice": memory, "r1": memory, "bob": memory},
        flight_fibres=[FlightFibre("a-r1", "alice", "r1", 10.0, fibre),
                       FlightFibre("r1-b", "r1", "bob", 10.0, fibre)],
        hybrid={"r1": NodeHybrid(budget_us, line_db_per_us, compensate),
                "bob": NodeHybrid(0.0, 0.0, compensate)})


def correction(reference) -> dict:
    """QubitGate fields undoing the readout ``reference`` (a rotation vector)."""
    r = np.asarray(reference)
    angle = float(np.linalg.norm(r))
    axis = tuple(float(x) for x in r / angle) if angle else (0.0, 0.0, 1.0)
    return {"gate": "ROT", "axis": axis, "angle": -angle} if angle else {}


async def run_router(r1, arrivals, compensate: bool, log: list) -> None:
    async for arrived in arrivals:
        if not arrived.present:
            continue
        rotation = tuple(-x for x in arrived.reference) if compensate else None
        try:
            await r1.request(p.PayloadSwitch, link="r1-b", payload=arrived.payload,
                             rotation=rotation)
        except DaemonError as exc:
            log.append(exc.code)


async def flow(config: DaemonConfig, n: int, compensate: bool, nursery,
               prepare_send: bool = False):
    """Send ``n`` random axis states alice -> bob through r1 (``QubitPrepare`` and
    ``QubitSend``, or one ``QubitPrepareSend``); bob measures each in its axis.
    Returns (send times, correct outcomes, daemon)."""
    daemon = await nursery.start(serve, config)
    port = daemon.port
    async with (open_daemon("127.0.0.1", port, "alice", "tok-a") as alice,
                open_daemon("127.0.0.1", port, "r1", "tok-r") as r1,
                open_daemon("127.0.0.1", port, "bob", "tok-b") as bob):
        router_in = r1.payloads("a-r1")
        await r1.request(p.FlightOpen, link="a-r1")
        bob_in = bob.payloads("r1-b")
        await bob.request(p.FlightOpen, link="r1-b")
        refused: list[str] = []
        rng = np.random.default_rng(3)
        sent: dict[int, tuple[float, int]] = {}
        correct: list[int] = []
        times: list[float] = []
        arrived = None
        async with trio.open_nursery() as inner:
            inner.start_soon(run_router, r1, router_in, compensate, refused)
            for _ in range(n):
                with trio.fail_after(10):  # at most 16 undecided at the router: it keeps up
                    while sum(x.in_spool for x in daemon.flight.payloads.values()) >= 16:
                        await trio.sleep(1e-3)
                k = int(rng.integers(6))
                (theta, phi), _, _ = STATES[k]
                if prepare_send:
                    reply = await alice.request(p.QubitPrepareSend, link="a-r1", theta=theta,
                                                phi=phi)
                else:
                    q = (await alice.request(p.QubitPrepare, theta=theta, phi=phi)).qubit
                    reply = await alice.request(p.QubitSend, link="a-r1", qubit=q)
                sent[reply.payload] = (reply.t, k)
            # until every payload's fate is known (the in-process daemon's table is empty)
            # and bob has measured every one stored
            seen = 0
            with trio.fail_after(60):
                while daemon.flight.payloads or seen < daemon.flight.counts["bob.stored"] \
                        + daemon.flight.counts["bob.lost_in_fibre"]:
                    with trio.move_on_after(0.2):
                        arrived = await bob_in.receive()
                    if arrived is None:
                        continue
                    seen += 1
                    if not arrived.present:
                        arrived = None
                        continue
                    t, k = sent[arrived.payload]
                    ref = p.QubitRef("bob", arrived.slot)
                    if compensate and (fix := correction(arrived.reference)):
                        await bob.request(p.QubitGate, qubits=[ref], **fix)
                    _, basis, want = STATES[k]
                    m = await bob.request(p.QubitMeasure, qubits=[ref], bases=[basis])
                    correct.append(int(m.outcomes[0] == want))
                    times.append(t)
                    arrived = None
            inner.cancel_scope.cancel()
        stats = await r1.request(p.MemoryStatsRequest)
        assert stats.measurements == {}  # the router never measured
    return np.array([t for t, _ in sent.values()]), np.array(correct), daemon, refused


@pytest.mark.parametrize("compensate, diffusion, prepare_send",
                         [(True, 5.0, True), (False, 2.0, False)])
async def test_path_matches_flow_model(nursery, compensate: bool, diffusion: float,
                                       prepare_send: bool) -> None:
    # a 200 ms spool (1 dB, as 50 ms at 2e-5 dB/us): this in-process router shares one trio
    # loop with the daemon and both ends, and on a loaded machine a 50 ms stall happens
    config = make_config(compensate, diffusion, budget_us=200_000.0, line_db_per_us=5e-6)
    n = 800
    times, correct, daemon, refused = await flow(config, n, compensate, nursery, prepare_send)
    assert refused == []
    fibres = {frozenset((f.a, f.b)): f for f in config.flight_fibres}
    hops = path_hops(["alice", "r1", "bob"], fibres, config.hybrid)
    model = flight.flow_model(hops, times - times.min())  # calibrated at the first crossing
    counts = daemon.flight.counts
    assert counts["r1.late"] == 0 and counts["r1.switches"] == counts["r1.arrived"]
    assert counts["r1.rotations"] == (counts["r1.switches"] if compensate else 0)
    # delivered fraction: binomial over the n sends
    se = math.sqrt(model.delivered * (1 - model.delivered) / n)
    assert abs(correct.size / n - model.delivered) < 4 * se, (correct.size, model)
    # fidelity (input-averaged over the six axis states, a 2-design): binomial + spread
    f = model.fidelity
    se = math.sqrt(f * (1 - f) / correct.size + model.fidelity_spread ** 2)
    assert abs(correct.mean() - f) < 4 * se, (correct.mean(), model)
    if compensate:
        assert model.fidelity > 0.93  # and without, the drift costs visibly (below)
    else:
        assert model.fidelity < 0.95  # over the ~0.3 s of sends


async def test_late_switch_is_refused_and_counted(nursery) -> None:
    config = make_config(True, 0.0, budget_us=1.0)  # 1 us: no Python decides that fast
    times, correct, daemon, refused = await flow(config, 60, True, nursery)
    counts = daemon.flight.counts
    assert correct.size == 0 and counts["r1.switches"] == 0
    assert counts["r1.late"] == counts["r1.arrived"] > 0
    assert set(refused) == {"late"}


async def test_refusals_and_no_measurement_in_flight(nursery) -> None:
    config = make_config(True, 0.0)
    daemon = await nursery.start(serve, config)
    port = daemon.port
    async with (open_daemon("127.0.0.1", port, "alice", "tok-a") as alice,
                open_daemon("127.0.0.1", port, "r1", "tok-r") as r1,
                open_daemon("127.0.0.1", port, "bob", "tok-b") as bob):
        arrivals = r1.payloads("a-r1")
        await r1.request(p.FlightOpen, link="a-r1")
        q = (await alice.request(p.QubitPrepare)).qubit
        with pytest.raises(DaemonError) as err:  # only one's own qubit
            await bob.request(p.QubitSend, link="r1-b", qubit=q)
        assert err.value.code == "not_allowed"
        with pytest.raises(DaemonError) as err:  # not an end of that fibre
            await bob.request(p.QubitSend, link="a-r1", qubit=p.QubitRef("bob", 0))
        assert err.value.code == "not_allowed"
        sent = await alice.request(p.QubitSend, link="a-r1", qubit=q)
        with pytest.raises(DaemonError) as err:  # a payload bob does not hold
            await bob.request(p.PayloadSwitch, link="r1-b", payload=sent.payload)
        assert err.value.code == "not_allowed"
        with pytest.raises(DaemonError) as err:  # the sender's slot is free now
            await alice.request(p.QubitMeasure, qubits=[q], bases=["Z"])
        assert err.value.code == "empty_slot"
        with trio.fail_after(5):
            while not (arrived := await arrivals.receive()).present:
                sent = await alice.request(p.QubitSend, link="a-r1",
                                           qubit=(await alice.request(p.QubitPrepare)).qubit)
        for flying in (p.QubitRef(FLIGHT, 0), p.QubitRef("r1", 0)):  # never measure a payload
            with pytest.raises(DaemonError):
                await r1.request(p.QubitMeasure, qubits=[flying], bases=["Z"])
        with pytest.raises(DaemonError) as err:
            await r1.request(p.PayloadSwitch, link="r1-b", payload=10**9)
        assert err.value.code == "not_allowed"
        done = await r1.request(p.PayloadSwitch, link="r1-b", payload=arrived.payload)
        assert done.t_depart == pytest.approx(arrived.deadline)
        with pytest.raises(DaemonError) as err:  # switched once only
            await r1.request(p.PayloadSwitch, link="r1-b", payload=arrived.payload)
        assert err.value.code == "not_allowed"
    assert daemon.memories.measurements["r1"] == 0
    assert daemon.flight.counts["r1.refused"] == 2


async def test_switched_payload_leaves_at_its_spool_end_without_a_timer(nursery) -> None:
    """A switch set in time schedules the next arrival at once (spool end + fibre delay);
    a payload nobody switches is lost as late at its spool end, and a switch after it is
    refused as late. ``QubitPrepareSend`` takes no memory slot of the sender's."""
    config = make_config(False, 0.0, budget_us=200_000.0, noise=0.0, attenuation=0.0,
                         line_db_per_us=0.0)
    daemon = await nursery.start(serve, config)
    plane = daemon.flight
    async with (open_daemon("127.0.0.1", daemon.port, "alice", "tok-a") as alice,
                open_daemon("127.0.0.1", daemon.port, "r1", "tok-r") as r1,
                open_daemon("127.0.0.1", daemon.port, "bob", "tok-b") as bob):
        arrivals, bob_in = r1.payloads("a-r1"), bob.payloads("r1-b")
        await r1.request(p.FlightOpen, link="a-r1")
        await bob.request(p.FlightOpen, link="r1-b")
        free = daemon.memories.free_slots("alice")
        sent = [await alice.request(p.QubitPrepareSend, link="a-r1", theta=math.pi)
                for _ in range(2)]
        assert daemon.memories.free_slots("alice") == free
        with trio.fail_after(5):
            got = [await arrivals.receive() for _ in range(2)]
        assert [a.payload for a in got] == [s.payload for s in sent]
        assert all(a.present for a in got)
        switched = await r1.request(p.PayloadSwitch, link="r1-b", payload=got[0].payload)
        assert switched.t <= switched.t_depart == got[0].deadline
        delay = plane.links["r1-b"].delay_s
        if daemon.clock.now() < got[0].deadline:  # (a loaded machine may be past it)
            assert [(t, pid) for t, _, pid in plane.events] == [(got[0].deadline + delay,
                                                                 got[0].payload)]
        with trio.fail_after(5):
            stored = await bob_in.receive()
        assert stored.payload == got[0].payload and stored.present
        assert stored.t == got[0].deadline + delay
        m = await bob.request(p.QubitMeasure, qubits=[p.QubitRef("bob", stored.slot)],
                              bases=["Z"])
        assert m.outcomes == b"\x01"  # |1> as prepared: no drift, no noise
        await trio.sleep(max(0.0, got[1].deadline - daemon.clock.now()) + 0.01)
        assert plane.counts["r1.late"] == 1 and plane.counts["r1.switches"] == 1
        with pytest.raises(DaemonError) as err:
            await r1.request(p.PayloadSwitch, link="r1-b", payload=got[1].payload)
        assert err.value.code == "late"
    assert daemon.memories.free_slots(FLIGHT) == 100_000
    assert not plane.payloads and not plane.events


def test_rotation_vector_inverts_su2() -> None:
    rng = np.random.default_rng(5)
    for u in polarisation.haar_su2(rng, 50):
        w = rotation_vector(u)
        assert np.linalg.norm(w) <= math.pi + 1e-9
        back = polarisation.su2(np.asarray(w))
        assert min(np.abs(back - u).max(), np.abs(back + u).max()) < 1e-9


async def test_cut_quantum_plane_loses_every_payload(nursery) -> None:
    from emulator.telemetry import LinkControl

    config = make_config(True, 0.0)
    daemon = await nursery.start(serve, config)
    async with open_daemon("127.0.0.1", daemon.port, "alice", "tok-a") as alice, \
            open_daemon("127.0.0.1", daemon.port, "r1", "tok-r") as r1:
        arrivals = r1.payloads("a-r1")
        await r1.request(p.FlightOpen, link="a-r1")
        daemon.link_states.control("a-r1", LinkControl(action="cut"), daemon.clock.now())
        for _ in range(20):
            q = (await alice.request(p.QubitPrepare)).qubit
            await alice.request(p.QubitSend, link="a-r1", qubit=q)
        with trio.fail_after(5):
            got = [await arrivals.receive() for _ in range(20)]
    assert not any(x.present for x in got)
    assert daemon.flight.counts["r1.lost_in_fibre"] == 20
    assert daemon.memories.free_slots(FLIGHT) == 100_000  # nothing left in flight


async def test_destination_stores_from_its_delay_line(nursery) -> None:
    config = make_config(True, 0.0, noise=0.0)
    daemon = await nursery.start(serve, config)
    async with open_daemon("127.0.0.1", daemon.port, "alice", "tok-a") as alice, \
            open_daemon("127.0.0.1", daemon.port, "r1", "tok-r") as r1:
        arrivals = r1.payloads("a-r1")
        await r1.request(p.FlightOpen, link="a-r1")
        with trio.fail_after(5):  # |1>, until one survives the fibre
            while True:
                q = (await alice.request(p.QubitPrepare, theta=math.pi)).qubit
                await alice.request(p.QubitSend, link="a-r1", qubit=q)
                if (arrived := await arrivals.receive()).present:
                    break
        with pytest.raises(DaemonError) as err:  # it arrived on a-r1, not r1-b
            await r1.request(p.PayloadStore, link="r1-b", payload=arrived.payload)
        assert err.value.code == "not_allowed"
        stored = await r1.request(p.PayloadStore, link="a-r1", payload=arrived.payload)
        m = await r1.request(p.QubitMeasure, qubits=[p.QubitRef("r1", stored.slot)],
                             bases=["Z"])
        assert m.outcomes == b"\x01"  # no drift, no noise: the state that was sent
        with pytest.raises(DaemonError) as err:  # gone from the delay line
            await r1.request(p.PayloadSwitch, link="r1-b", payload=arrived.payload)
        assert err.value.code == "not_allowed"
    assert daemon.flight.counts["r1.stored"] == 1


class _Recording:
    """A connection stand-in that keeps what the pump sends it."""

    def __init__(self) -> None:
        self.frames: list = []

    async def send(self, message) -> bool:
        self.frames.append(message)
        return True


def test_pump_sends_queued_pushes_in_one_frame_in_order():
    """Pushes queued while the pump was busy leave as ``PayloadsArrived`` (at most
    ``PUSH_BATCH`` each, in order); a lone one stays a plain ``PayloadArrived``; the daemon
    client hands the batch's arrivals to the link's channel one by one."""
    from emulator.daemon.links.flight import PUSH_BATCH, FlightLinkRuntime
    from nodes.daemon_client import DaemonClient

    n = PUSH_BATCH + 44
    pushes = [p.PayloadArrived("a-r1", i, i * 1e-3, True, -1, 1.0) for i in range(n)]

    async def main():
        conn = _Recording()
        send, receive = trio.open_memory_channel(10 * n)
        for m in pushes:
            send.send_nowait(m)
        send.close()
        await FlightLinkRuntime._pump(conn, receive)
        assert [type(f) for f in conn.frames] == [p.PayloadsArrived, p.PayloadsArrived]
        assert [len(f.arrivals) for f in conn.frames] == [PUSH_BATCH, 44]
        lone = _Recording()
        send, receive = trio.open_memory_channel(1)
        send.send_nowait(pushes[0])
        send.close()
        await FlightLinkRuntime._pump(lone, receive)
        assert lone.frames == [pushes[0]]

        class Framed:  # the client's side: the two batch frames, then the daemon closes
            def __init__(self) -> None:
                self.data = [p.encoder.encode(f) for f in conn.frames]

            async def receive(self):
                return self.data.pop(0) if self.data else None

        client = DaemonClient(Framed(), None)
        channel = client.payloads("a-r1", buffer=n)
        with pytest.raises(ConnectionError):
            await client._read_loop()
        got = [channel.receive_nowait() for _ in range(n)]
        assert got == pushes
    trio.run(main)
