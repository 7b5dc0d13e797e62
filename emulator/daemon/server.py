"""The quantum daemon: its links, memories and node sessions, and the TCP server around them.

``Daemon`` owns the shared state (emulated clock, ``QuantumMemories``, taps) and one runtime
per link (``links.photon``, ``links.heralded``); ``session.Sessions`` serves connections and
routes each request by type through ``Daemon.handlers``. A node can ask for its own numbers
only. A failure in a link task propagates out of ``serve`` and ends the process (the
orchestrator turns that into exit 3 with the log tail). Wire format: ``protocol``.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import numpy as np
import trio

from emulator import telemetry
from emulator.child_config import DaemonConfig
from emulator.clock import EmulatedClock
from emulator.daemon import memories as mem
from emulator.daemon import ops
from emulator.daemon import protocol as p
from emulator.daemon.links import LinkRuntime
from emulator.daemon.links.flight import FLIGHT, FLIGHT_SLOTS, FlightLinkRuntime, FlightPlane
from emulator.daemon.links.heralded import HeraldedLinkRuntime
from emulator.daemon.links.photon import PhotonLinkRuntime
from emulator.daemon.session import Connection, SessionLimits, Sessions
from emulator.daemon.taps import Taps
from emulator.daemon.traffic import LinkStates

log = logging.getLogger("qnet.daemon")

METRICS_INTERVAL_S = 1.0  # wall seconds between daemon/metrics publications
FINAL_PUBLISH_TIMEOUT_S = 2.0
REPORTED_SESSION_COUNTERS = ("connections", "authenticated", "rejected_too_many",
                             "rejected_unauthenticated", "rejected_bad_version",
                             "rejected_bad_frame", "rejected_too_large", "rejected_truncated",
                             "internal_errors")


def memory_spec(memory, detuning_hz: float = 0.0) -> mem.MemorySpec:
    """``NodeMemory`` (scenario, seconds, None = no decay) and clock detuning -> ``MemorySpec``."""
    return mem.MemorySpec(
        slots=memory.slots,
        t1=memory.t1_s if memory.t1_s is not None else math.inf,
        t2=memory.t2_s if memory.t2_s is not None else math.inf,
        cutoff=memory.cutoff_s,
        detuning_hz=detuning_hz,
    )


class Daemon:
    """Shared state of one run's daemon; the ``LinkHost`` its link runtimes use."""

    def __init__(self, config: DaemonConfig, limits: SessionLimits = SessionLimits()) -> None:
        self.config = config
        self.clock = EmulatedClock(config.t0, config.time_scale)
        self.taps = Taps()
        self.memories = mem.QuantumMemories(
            {node: memory_spec(m, config.clocks.get(node, 0.0))
             for node, m in config.memories.items()}
            | ({FLIGHT: mem.MemorySpec(FLIGHT_SLOTS)} if config.flight_fibres else {}))
        self.nursery: trio.Nursery | None = None
        self.port = 0
        self._freed = trio.Event()
        self._pair_ids = 0
        self.link_states = LinkStates()
        self.photon_links = {x.name: PhotonLinkRuntime(x, self) for x in config.links}
        links_at: dict[str, int] = {}
        for x in config.entanglement_links:
            for end in (x.a, x.b):
                links_at[end] = links_at.get(end, 0) + 1
        self.heralded_links = {
            x.name: HeraldedLinkRuntime(x, self, {end: self._share(end, links_at[end])
                                                  for end in (x.a, x.b)})
            for x in config.entanglement_links}
        self.flight = FlightPlane(self, dict(config.hybrid))
        self.flight_links = {x.name: FlightLinkRuntime(x, self.flight)
                             for x in config.flight_fibres}
        self.ops = ops.StateOps(self.memories, self.rng(4), self._notify_freed)
        self.sessions = Sessions(config.tokens, self._welcome, self._handlers(),
                                 self._connection_closed, limits)

    # -- LinkHost -------------------------------------------------------------------------------

    def rng(self, *words: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed & 0xFFFFFFFFFFFFFFFF, *words])

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self.nursery is not None, "the daemon is not serving"
        self.nursery.start_soon(fn, *args)

    def new_pair_id(self) -> int:
        self._pair_ids += 1
        return self._pair_ids

    def expire(self) -> None:
        if self.memories.expire(self.clock.now()):
            self._notify_freed()

    async def slots_freed(self) -> None:
        await self._freed.wait()

    def _notify_freed(self) -> None:
        self._freed.set()
        self._freed = trio.Event()

    def _share(self, node: str, n_links: int) -> int:
        """Slots of ``node`` one of its entanglement links may hold (an even split)."""
        slots = self.memories.spec(node).slots if node in self.config.memories else 0
        return max(1, slots // max(1, n_links))

    # -- sessions -------------------------------------------------------------------------------

    @property
    def sent_by_node(self):
        return self.sessions.sent_by_node

    def _welcome(self, node: str) -> p.Welcome:
        return p.Welcome(p.PROTOCOL_VERSION, node, self.config.t0, self.config.time_scale)

    def _handlers(self) -> dict[type, Callable]:
        table: dict[type, Callable] = {p.StatsRequest: self._stats,
                                       p.MemoryStatsRequest: self._memory_stats}
        table.update(dict.fromkeys(ops.REQUESTS, self._state_op))
        for kind, cls, links in (("quantum", PhotonLinkRuntime, self.photon_links),
                                 ("entanglement", HeraldedLinkRuntime, self.heralded_links),
                                 ("flight", FlightLinkRuntime, self.flight_links)):
            table.update(dict.fromkeys(cls.requests,
                                       functools.partial(self._link_request, kind, links)))
        return table

    def _connection_closed(self, conn: Connection) -> None:
        for link in self.links():
            link.connection_closed(conn)

    def links(self) -> list[LinkRuntime]:
        return [*self.photon_links.values(), *self.heralded_links.values(),
                *self.flight_links.values()]

    async def _link_request(self, kind: str, links: dict[str, LinkRuntime], conn: Connection,
                            request) -> msgspec.Struct | None:
        link = links.get(request.link)
        if link is None:
            return p.Error("unknown", f"unknown {kind} link {request.link!r}", id=request.id)
        if conn.node not in link.ends:
            return p.Error("not_allowed", f"{conn.node!r} is not an end of {request.link!r}",
                           id=request.id)
        return await link.handle(conn, request)

    async def _state_op(self, conn: Connection, request) -> msgspec.Struct:
        """One state-level operation on ``conn.node``'s own qubits (never another node's)."""
        node = conn.node
        if node not in self.config.memories:
            return p.Error("not_allowed", f"node {node!r} has no quantum memory", id=request.id)
        self.expire()
        return self.ops.apply(node, request, self.clock.now())

    async def _stats(self, conn: Connection, request: p.StatsRequest) -> p.Stats:
        """Photon-link counters over the links ``conn.node`` is an end of."""
        own = [x.counters() for x in self.photon_links.values() if conn.node in x.ends]
        return p.Stats(
            id=request.id,
            lag_s=max((c["lag_s"] for c in own), default=0.0),
            frames=sum(int(c["frames"]) for c in own),
            pulses=sum(int(c["pulses"]) for c in own),
            detections=sum(int(c["detections"]) for c in own),
            lag_recent_s=max((c["lag_recent_s"] for c in own), default=0.0),
            dropped_frames=sum(int(c["dropped_frames"]) for c in own),
            cpu_s=time.process_time(),
        )

    async def _memory_stats(self, conn: Connection, request: p.MemoryStatsRequest
                            ) -> p.MemoryStats:
        """``conn.node``'s own measurements, expired halves and free slots, and the pairs
        generated on the links it is an end of."""
        node = conn.node
        assert node is not None
        measured = self.memories.measurements[node]
        return p.MemoryStats(
            id=request.id,
            measurements={node: measured} if measured else {},
            pairs_generated={name: x.generated for name, x in self.heralded_links.items()
                             if node in x.ends},
            pairs_expired=self.memories.expired[node],
            free_slots={node: self.memories.free_slots(node)}
            if node in self.config.memories else {},
        )

    # -- report ---------------------------------------------------------------------------------

    def report(self) -> telemetry.DaemonReport:
        """Connection and link counters for ``daemon/metrics`` and ``daemon/result``."""
        s = self.sessions
        counters = dict.fromkeys(REPORTED_SESSION_COUNTERS, 0)
        counters.update({k: int(v) for k, v in s.counters.items()})
        counters["open_connections"] = len(s.open)
        for name, link in self.photon_links.items():
            for key, value in link.counters().items():
                if key.endswith("_s"):  # integer counters only: seconds as microseconds
                    counters[f"link.{name}.{key[:-2]}_us"] = round(value * 1e6)
                else:
                    counters[f"link.{name}.{key}"] = int(value)
        counters.update({f"link.{name}.pairs_generated": x.generated
                         for name, x in self.heralded_links.items()})
        counters["pairs_expired"] = sum(self.memories.expired.values())
        counters.update({f"flight.{key}": n for key, n in self.flight.counts.items()})
        counters["cpu_ms"] = round(time.process_time() * 1e3)
        return telemetry.DaemonReport(
            link_state=self.link_states.report(),
            connections=s.counters["connections"],
            rejected_connections=s.rejected(),
            bad_frames=s.counters["rejected_bad_frame"] + s.counters["rejected_too_large"]
            + s.counters["rejected_truncated"],
            measurements=dict(self.memories.measurements),
            counters=counters,
        )


async def serve(config: DaemonConfig, limits: SessionLimits = SessionLimits(), *,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``config.host`` (port 0) and serve until cancelled or stopped over MQTT
    (``control/stop``); with MQTT, publishes ``daemon/metrics`` and a final ``daemon/result``."""
    daemon = Daemon(config, limits)
    listeners = await trio.open_tcp_listeners(0, host=config.host)
    for extra in listeners[1:]:
        await extra.aclose()
    listener = listeners[0]
    daemon.port = listener.socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        daemon.nursery = nursery
        nursery.start_soon(functools.partial(trio.serve_listeners, daemon.sessions.handle,
                                             [listener], handler_nursery=nursery))
        if daemon.flight_links:
            nursery.start_soon(daemon.flight.run)  # flying qubits' timeline (links/flight.py)
        if config.mqtt is not None:
            await nursery.start(_telemetry, daemon)
        task_status.started(daemon)


async def _link_message(daemon: Daemon, mqtt, got: telemetry.Decoded | None) -> None:
    """A fault (``control/link/<link>``: applied, effect published on ``daemon/fault``) or a
    relay's measured traffic (Raman noise) for ``daemon.link_states``; anything else is
    ignored (the decoder counts what it rejected)."""
    if got is None:
        return
    if isinstance(got.payload, telemetry.TrafficReport):
        daemon.link_states.traffic(got.name, got.payload, daemon.clock.now())
    elif isinstance(got.payload, telemetry.LinkControl):
        effect = daemon.link_states.control(got.name, got.payload, daemon.clock.now())
        if effect is not None:
            log.info("link %s: %s", got.name, effect)
            await mqtt.publish(telemetry.daemon_fault(daemon.config.run_id), telemetry.encode(
                telemetry.FaultEffect(got.name, got.payload.action, got.payload.plane,
                                      effect, daemon.clock.now())), qos=1)


async def _telemetry(daemon: Daemon, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Publish the report each second; on ``control/stop`` publish it retained and stop."""
    config = daemon.config
    assert config.mqtt is not None
    async with telemetry.connect(config.mqtt, f"qnet-{config.run_id}-daemon") as mqtt:
        await mqtt.subscribe(telemetry.control_stop(config.run_id), qos=1)
        await mqtt.subscribe(telemetry.control_link(config.run_id, "+"), qos=1)
        await mqtt.subscribe(telemetry.relay_traffic(config.run_id, "+"), qos=0)
        decoder = telemetry.TelemetryDecoder(config.run_id)
        task_status.started()
        async with trio.open_nursery() as nursery:
            async def metrics() -> None:
                while True:
                    await trio.sleep(METRICS_INTERVAL_S)
                    await mqtt.publish(telemetry.daemon_metrics(config.run_id),
                                       telemetry.encode(daemon.report()))

            nursery.start_soon(metrics)
            async for message in mqtt.messages():
                if message.topic == telemetry.control_stop(config.run_id):
                    break
                await _link_message(daemon, mqtt, decoder.decode(message.topic,
                                                                 message.payload))
            nursery.cancel_scope.cancel()
        with trio.move_on_after(FINAL_PUBLISH_TIMEOUT_S) as scope:
            await mqtt.publish(telemetry.daemon_result(config.run_id),
                               telemetry.encode(daemon.report()), qos=1, retain=True)
        if scope.cancelled_caught:
            log.warning("final daemon report not acknowledged in time")
    log.info("final report %s", telemetry.encode(daemon.report()).decode())
