"""What an app running inside a node can use: the node's identity, clock, daemon, peers, MQTT.

An app is ``async def run(node: NodeContext, app) -> list[dict]``, started by the node runtime
once the orchestrator says go; it returns its result entries (merged into result.json). It
reaches its peer only through ``node.transport`` (real sockets through the relay) and the
quantum world only through ``node.daemon`` (its own daemon connection). It knows of the
scenario only ``node.view`` (its own links with their physics, its memory, the other links'
names and ends) and its own app specs.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import trio

from emulator import telemetry
from emulator.child_config import NodeView
from emulator.clock import EmulatedClock
from emulator.mqtt import MqttClient
from emulator.telemetry import NodeEvent, NodeMetrics, Scalar
from nodes.daemon_client import DaemonClient
from nodes.services.keys import KeyManager
from nodes.transport import Transport

_METRIC_FIELDS = frozenset(NodeMetrics.__struct_fields__) - {"node", "t_emu", "extra"}

# Which app the current task runs for (set by the runtime per app task; keys ``partial``).
current_app: ContextVar[str] = ContextVar("current_app", default="app")


@dataclass
class NodeContext:
    name: str
    run_id: str
    seed: int
    clock: EmulatedClock
    view: NodeView  # this node's part of the scenario: own links, memory, other links' ends
    daemon: DaemonClient
    transport: Transport
    mqtt: MqttClient
    keys: KeyManager | None = None  # the node's key manager (nodes/services/keys), if any
    kme: Any = None  # the node's ETSI 014 KME (nodes/services/kme/service.Kme), if any
    tunnel: Any = None  # the node's program tunnels (nodes/services/tunnel), if any
    services: trio.Nursery | None = None  # tasks that live as long as the node, not the app
    net: Any = None  # the routed plane (nodes/net/service.NetService), if the run routes
    t_start: float = 0.0  # emulated time at which apps start
    t_end: float = 0.0  # emulated time at which sources stop
    _rngs: dict[str, np.random.Generator] = field(default_factory=dict)
    _partials: dict[str, dict] = field(default_factory=dict)

    def rng(self, purpose: str) -> np.random.Generator:
        """A generator seeded from the run seed, this node and ``purpose`` (reproducible runs)."""
        if purpose not in self._rngs:
            words = [self.seed] + [ord(c) for c in f"{self.name}/{purpose}"]
            self._rngs[purpose] = np.random.default_rng(words)
        return self._rngs[purpose]

    def partial(self, entry: dict) -> None:
        """This app's result so far, published if the run is aborted before the app returns.

        Each call replaces the previous entry of the same app (``current_app``); call it after
        every delivered block, so a run that fails late still reports the keys produced."""
        self._partials[current_app.get()] = dict(entry)

    def partial_entries(self) -> list[dict]:
        """The latest ``partial`` entry of every app of this node (what an abort publishes),
        tagged with its app index like the entries an app returns."""
        tagged = ((key.rpartition(":")[2], entry) for key, entry in self._partials.items())
        return [{**entry, "app": int(index)} for index, entry in tagged if index.isdigit()]

    async def event(self, kind: str, **fields: Scalar) -> None:
        """Publish an event (key produced, alarm, ...) on ``node/<name>/events`` (qos 1)."""
        payload = msgspec.convert({"node": self.name, "kind": kind, "t_emu": self.clock.now(),
                                   "wall": time.time(), "fields": fields}, NodeEvent)
        await self.mqtt.publish(telemetry.node_events(self.run_id, self.name),
                                telemetry.encode(payload), qos=1)

    async def metrics(self, **fields: Scalar) -> None:
        """Publish a metrics sample on ``node/<name>/metrics`` (qos 0, best effort).

        Fields named in ``NodeMetrics`` (link, sifted_bits, qber, secret_bits, ...) are typed
        there; any other app-specific number goes to its ``extra``."""
        known = {k: v for k, v in fields.items() if k in _METRIC_FIELDS}
        extra = {k: v for k, v in fields.items() if k not in _METRIC_FIELDS}
        payload = msgspec.convert({"node": self.name, "t_emu": self.clock.now(), **known,
                                   "extra": extra}, NodeMetrics)
        await self.mqtt.publish(telemetry.node_metrics(self.run_id, self.name),
                                telemetry.encode(payload), qos=0)
