"""Every MQTT topic and payload of a run: one typed struct per payload, one function per topic.

Topics live under ``qnet/<run>/`` in five subtrees that no scenario name can collide with:
``control/...`` (orchestrator only), ``node/<name>/...``, ``relay/<link>/...``,
``daemon/...`` and ``request/...`` (``qnet fault`` to the orchestrator). Payloads are JSON (``msgspec.json``) so ``mosquitto_sub -t 'qnet/#' -v`` is
readable. ``TelemetryDecoder`` is the one way in: size-bounded, typed by topic, and anything
else is dropped and counted (never a traceback). ``credentials`` and ``acl`` give every
process of a run its own broker account and the topics it may publish under.
"""

from __future__ import annotations

import secrets
from collections import Counter
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

import msgspec

from emulator.child_config import Endpoint, MqttAddress
from emulator.mqtt import MqttClient, open_mqtt

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Account",
    "DaemonReport",
    "Decoded",
    "FaultEffect",
    "FaultReply",
    "FaultRequest",
    "LinkControl",
    "NodeEvent",
    "NodeMetrics",
    "NodeResult",
    "RelayReport",
    "StartMessage",
    "StopMessage",
    "TelemetryDecoder",
    "TrafficReport",
    "acl",
    "connect",
    "control_filter",
    "control_link",
    "control_start",
    "control_fault_reply",
    "control_stop",
    "credentials",
    "daemon_metrics",
    "daemon_fault",
    "daemon_result",
    "encode",
    "node_events",
    "node_metrics",
    "node_result",
    "relay_fault",
    "relay_metrics",
    "relay_result",
    "relay_traffic",
    "request_fault",
    "run_filter",
]

MAX_PAYLOAD_BYTES = 1 << 20  # a node result with many blocks is a few tens of kB
MAX_DEPTH = 32  # nesting allowed inside result entries (real ones use 3 levels)
ORCHESTRATOR = "orchestrator"
DAEMON = "daemon"
OBSERVER = "observer"  # read-only login for people watching a run (mosquitto_sub)
OPERATOR = "operator"  # login of `qnet fault`: may only ask the orchestrator for a fault

Scalar = str | int | float | bool | None


class _Payload(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every payload: unknown fields are an error, defaults stay off the wire."""


# -- control (orchestrator -> everyone) ------------------------------------------------------
class StartMessage(_Payload):
    """``control/start`` (retained): per node, per peer, the relay endpoint to dial."""

    t_start: float  # emulated time at which apps start
    t_end: float  # emulated time at which sources stop
    peers: dict[str, dict[str, Endpoint]]


class StopMessage(_Payload):
    """``control/stop``: ``done`` after the results came in; ``abort`` when the run failed."""

    reason: Literal["done", "abort"] = "done"


Plane = Literal["classical", "quantum", "both"]


class LinkControl(_Payload):
    """``control/link/<link>``: a fault, applied by that link's relay (classical plane) and by
    the daemon (quantum plane). ``degrade`` sets the extra attenuation ``db`` (quantum) and
    extra datagram loss probability ``loss`` (classical) on ``plane``; zeros clear it."""

    action: Literal["cut", "restore", "corrupt", "degrade"]
    plane: Plane = "both"
    db: float = 0.0
    loss: float = 0.0


class FaultReply(_Payload):
    """``control/fault_reply``: the orchestrator's answer to a ``FaultRequest`` (same id)."""

    id: str
    ok: bool
    error: str = ""


# -- request/... (operator -> orchestrator) ---------------------------------------------------
class FaultRequest(_Payload):
    """``request/fault``: ``qnet fault`` asks the orchestrator to apply a fault now (it is
    checked like a ``[[faults]]`` entry, then applied and recorded like one)."""

    id: str
    action: Literal["cut", "restore", "corrupt", "degrade", "crash"]
    target: str  # a link, or a node for crash
    plane: Plane = "both"
    db: float = 0.0
    loss: float = 0.0
    for_s: float | None = None
    restart_after_s: float | None = None


# -- node/<name>/... --------------------------------------------------------------------------
class NodeResult(_Payload):
    """``node/<name>/result`` (retained): the node's app result entries and its counters."""

    node: str
    apps: list[dict[str, Any]]
    counters: dict[str, int] = {}
    partial: bool = False  # published on abort: what the apps had recorded so far
    services: dict[str, Any] = {}  # node services' reports, e.g. "kms" (nodes/services)
    final: bool = False  # re-published on control/stop: counters and services at the run's end


class NodeMetrics(_Payload):
    """``node/<name>/metrics``, about once a second: live progress of one app on one link."""

    node: str
    t_emu: float
    link: str | None = None
    detections: int | None = None
    sifted_bits: int | None = None
    qber: float | None = None  # running estimate from the bits the node has compared
    secret_bits: int | None = None
    pairs: int | None = None
    fidelity: float | None = None
    extra: dict[str, Scalar] = {}  # app-specific numbers not named above


class NodeEvent(_Payload):
    """``node/<name>/events``: something happened (key produced, source stopped, ...)."""

    node: str
    kind: str
    t_emu: float
    wall: float
    fields: dict[str, Scalar] = {}


# -- relay/<link>/... and daemon/... ----------------------------------------------------------
class RelayReport(_Payload):
    """``relay/<link>/metrics`` (each second) and ``relay/<link>/result`` (retained, on stop)."""

    name: str
    a: str
    b: str
    bytes_ab: int
    bytes_ba: int
    messages: int
    dropped: int
    counters: dict[str, int] = {}  # further counters (foreign datagrams, rejected, ...)


class TrafficReport(_Payload):
    """``relay/<link>/traffic`` (every ``emulator.relay_telemetry.TRAFFIC_INTERVAL_S``): bytes each
    direction delivered in the last ``window_s`` emulated seconds (the daemon's Raman input)."""

    window_s: float
    bytes_ab: int
    bytes_ba: int


class FaultEffect(_Payload):
    """``relay/<link>/fault`` and ``daemon/fault``: what a process did on a ``LinkControl``."""

    link: str
    action: str
    plane: str
    effect: str
    t_emu: float


class DaemonReport(_Payload):
    """``daemon/metrics`` and ``daemon/result`` (retained, on stop): the daemon's counters."""

    connections: int = 0
    rejected_connections: int = 0
    bad_frames: int = 0
    measurements: dict[str, int] = {}  # node -> measurements it requested
    counters: dict[str, int] = {}
    link_state: dict[str, dict[str, float]] = {}  # link -> faults and Raman noise applied


# -- topics ------------------------------------------------------------------------------------
def run_filter(run: str) -> str:
    """Everything of a run (the orchestrator's subscription)."""
    return f"qnet/{run}/#"


def control_filter(run: str) -> str:
    """Every control topic of a run (what nodes, relays and the daemon subscribe to)."""
    return f"qnet/{run}/control/#"


def control_start(run: str) -> str:
    return f"qnet/{run}/control/start"


def control_stop(run: str) -> str:
    return f"qnet/{run}/control/stop"


def control_link(run: str, link: str) -> str:
    return f"qnet/{run}/control/link/{link}"


def control_fault_reply(run: str) -> str:
    return f"qnet/{run}/control/fault_reply"


def request_fault(run: str) -> str:
    return f"qnet/{run}/request/fault"


def relay_traffic(run: str, link: str) -> str:
    return f"qnet/{run}/relay/{link}/traffic"


def relay_fault(run: str, link: str) -> str:
    return f"qnet/{run}/relay/{link}/fault"


def daemon_fault(run: str) -> str:
    return f"qnet/{run}/daemon/fault"


def node_result(run: str, node: str) -> str:
    return f"qnet/{run}/node/{node}/result"


def node_metrics(run: str, node: str) -> str:
    return f"qnet/{run}/node/{node}/metrics"


def node_events(run: str, node: str) -> str:
    return f"qnet/{run}/node/{node}/events"


def relay_result(run: str, link: str) -> str:
    return f"qnet/{run}/relay/{link}/result"


def relay_metrics(run: str, link: str) -> str:
    return f"qnet/{run}/relay/{link}/metrics"


def daemon_result(run: str) -> str:
    return f"qnet/{run}/daemon/result"


def daemon_metrics(run: str) -> str:
    return f"qnet/{run}/daemon/metrics"


_ENCODER = msgspec.json.Encoder()


def encode(payload: _Payload) -> bytes:
    """The JSON bytes of a payload (the only encoding used on the broker)."""
    return _ENCODER.encode(payload)


# -- decoding ----------------------------------------------------------------------------------
# (subtree, leaf) -> payload type; the name between them is the node or link.
_BY_LEAF: dict[tuple[str, str], type[_Payload]] = {
    ("node", "result"): NodeResult,
    ("node", "metrics"): NodeMetrics,
    ("node", "events"): NodeEvent,
    ("relay", "result"): RelayReport,
    ("relay", "metrics"): RelayReport,
    ("relay", "traffic"): TrafficReport,
    ("relay", "fault"): FaultEffect,
}
_CONTROL: dict[str, type[_Payload]] = {"start": StartMessage, "stop": StopMessage,
                                       "fault_reply": FaultReply}
_DAEMON: dict[str, type[_Payload]] = {"result": DaemonReport, "metrics": DaemonReport,
                                      "fault": FaultEffect}
_REQUEST: dict[str, type[_Payload]] = {"fault": FaultRequest}


class Decoded(msgspec.Struct, frozen=True):
    """A received payload, its place in the topic tree and, for node/relay, whose it is."""

    subtree: Literal["control", "node", "relay", "daemon", "request"]
    leaf: str  # result, metrics, events, traffic, fault, start, stop, link, fault_reply
    name: str  # node or link name; "" for control start/stop and the daemon
    payload: Any


class TelemetryDecoder:
    """Typed, bounded decoding of one run's messages; rejects are counted by reason.

    ``decode`` never raises on what a client sent: a payload over ``max_bytes``, a topic
    outside the run's tree, bad JSON, a wrong type, a missing or unknown field, nesting deep
    enough to hit the recursion guard, or result entries nested deeper than ``MAX_DEPTH``
    gives None and a count in ``rejected``. An empty
    payload (the clearing of a retained message) is ignored without being counted.
    """

    def __init__(self, run: str, max_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        self.prefix = f"qnet/{run}/"
        self.max_bytes = max_bytes
        self.rejected: Counter[str] = Counter()
        self._decoders: dict[type, msgspec.json.Decoder] = {}

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def decode(self, topic: str, payload: bytes) -> Decoded | None:
        if not payload:
            return None
        if len(payload) > self.max_bytes:
            return self._reject("oversize")
        where = self._place(topic)
        if where is None:
            return self._reject("unknown_topic")
        subtree, leaf, name, kind = where
        try:
            value = self._decoder(kind).decode(payload)
        except (msgspec.DecodeError, RecursionError):
            return self._reject("bad_payload")
        if isinstance(value, NodeResult) and _too_deep(value.apps, MAX_DEPTH):
            return self._reject("too_deep")  # json.dump of result.json would recurse on it
        return Decoded(subtree, leaf, name, value)

    def _place(self, topic: str) -> tuple[Any, str, str, type[_Payload]] | None:
        if not topic.startswith(self.prefix):
            return None
        parts = topic[len(self.prefix):].split("/")
        if parts[0] == "control":
            if len(parts) == 2 and parts[1] in _CONTROL:
                return "control", parts[1], "", _CONTROL[parts[1]]
            if len(parts) == 3 and parts[1] == "link" and parts[2]:
                return "control", "link", parts[2], LinkControl
            return None
        if parts[0] == "daemon" and len(parts) == 2 and parts[1] in _DAEMON:
            return "daemon", parts[1], "", _DAEMON[parts[1]]
        if parts[0] == "request" and len(parts) == 2 and parts[1] in _REQUEST:
            return "request", parts[1], "", _REQUEST[parts[1]]
        if len(parts) == 3 and parts[1] and (parts[0], parts[2]) in _BY_LEAF:
            return parts[0], parts[2], parts[1], _BY_LEAF[(parts[0], parts[2])]
        return None

    def _decoder(self, kind: type) -> msgspec.json.Decoder:
        decoder = self._decoders.get(kind)
        if decoder is None:
            decoder = self._decoders[kind] = msgspec.json.Decoder(kind)
        return decoder

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        return None


def _too_deep(value: Any, limit: int) -> bool:
    """True if lists/dicts nest deeper than ``limit`` (iterative: no recursion of our own)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in item)
    return False


# -- accounts and ACL --------------------------------------------------------------------------
class Account(msgspec.Struct, frozen=True):
    """One process's broker login and the topic filters it may publish and subscribe to."""

    username: str
    password: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def node_user(name: str) -> str:
    return f"node.{name}"


def relay_user(link: str) -> str:
    return f"relay.{link}"


def credentials(run: str, nodes: list[str], links: list[str]) -> dict[str, Account]:
    """A fresh account per process of a run, keyed by ``orchestrator``, ``daemon``,
    ``node.<name>`` and ``relay.<link>`` (also its username; names cannot contain ``:``),
    plus ``observer``, which may only read (for a person with ``mosquitto_sub``), and
    ``operator`` (``qnet fault``), which may only publish ``request/fault`` and read
    ``control/``.

    Only the orchestrator publishes under ``control/``; a node only under ``node/<its
    name>/``, a relay under ``relay/<its link>/``, the daemon under ``daemon/``. Every child
    subscribes to ``control/`` only, except the daemon, which also reads the relays'
    ``traffic`` (Raman noise from measured load).
    """
    control = (control_filter(run),)
    accounts: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
        ORCHESTRATOR: ((control_filter(run),), (run_filter(run),)),
        DAEMON: ((f"qnet/{run}/daemon/#",), (*control, f"qnet/{run}/relay/+/traffic")),
        OPERATOR: ((request_fault(run),), control),
        # the broker serves this run only, so the observer may also ask for all of qnet/#
        # (what `mosquitto_sub -t 'qnet/#'` subscribes to)
        OBSERVER: ((), (run_filter(run), "qnet/#")),
    }
    for name in nodes:
        accounts[node_user(name)] = ((f"qnet/{run}/node/{name}/#",), control)
    for link in links:
        accounts[relay_user(link)] = ((f"qnet/{run}/relay/{link}/#",), control)
    return {user: Account(user, secrets.token_urlsafe(24), publish, subscribe)
            for user, (publish, subscribe) in accounts.items()}


def acl(accounts: dict[str, Account]) -> dict[str, dict[str, list[str]]]:
    """``{"publish": {user: [filters]}, "subscribe": {user: [filters]}}`` for a broker config."""
    return {
        "publish": {a.username: list(a.publish) for a in accounts.values()},
        "subscribe": {a.username: list(a.subscribe) for a in accounts.values()},
    }


def connect(address: MqttAddress, client_id: str,
            **options: Any) -> AbstractAsyncContextManager[MqttClient]:
    """``open_mqtt`` to an ``MqttAddress`` with the login it carries (if any)."""
    return open_mqtt(address.host, address.port, client_id, username=address.username,
                     password=address.password, **options)
