"""What the orchestrator hands each child process, and how a child says it is ready.

Each child is started as ``python -m <module> --config CONFIG.json --ready-file READY.json``.
The config is one of the Structs below (JSON); when the child has bound its sockets it writes
its ready file atomically (``write_ready``) with the ports it listens on. The orchestrator
waits for that file, which is the readiness handshake of DESIGN §2.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TypeVar

import msgspec

from emulator.apps import kind_of
from emulator.hybrid_config import FlightFibre, NodeHybrid
from emulator.netns.node_plan import NodeNetns
from emulator.programs import TunnelConfig
from emulator.scenario import (
    Kms,
    Link,
    LinkEntanglement,
    NodeMemory,
    QuantumLink,
    Routing,
    Scenario,
    memory_of,
)

T = TypeVar("T")


class MqttAddress(msgspec.Struct):
    """Where the broker is and this process's own login (None for an external broker)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None


class DaemonLink(msgspec.Struct):
    """A link as the quantum daemon sees it: source at ``a``, detectors at ``b``."""

    name: str
    a: str
    b: str
    length_km: float
    quantum: QuantumLink


class DaemonEntanglementLink(msgspec.Struct):
    """A link with heralded pair generation, as the daemon sees it."""

    name: str
    a: str
    b: str
    length_km: float
    entanglement: LinkEntanglement


class DaemonConfig(msgspec.Struct):
    run_id: str
    t0: float
    time_scale: float
    seed: int
    tokens: dict[str, str]  # node name -> token it must present in Hello
    links: list[DaemonLink]
    host: str = "127.0.0.1"
    mqtt: MqttAddress | None = None
    memories: dict[str, NodeMemory] = {}  # node -> its quantum memory (state level)
    clocks: dict[str, float] = {}  # node -> its clock detuning in Hz (absent = 0)
    entanglement_links: list[DaemonEntanglementLink] = []
    flight_fibres: list[FlightFibre] = []  # [links.flight]: fibres that carry flying qubits
    hybrid: dict[str, NodeHybrid] = {}  # node -> its [nodes.hybrid] (delay line)


class Direction(msgspec.Struct):
    """One direction of a classical link, in emulated seconds."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    # [[t_s, delay_s], ...] in emulated seconds since the run's start, interpolated; replaces
    # delay_s (a satellite pass's light time, emulator/physics/satellite.py)
    delay_schedule: list[tuple[float, float]] | None = None
    loss: float = 0.0  # applies to UDP datagrams only
    rate_bps: float | None = None


class Endpoint(msgspec.Struct):
    tcp: int
    udp: int
    host: str = "127.0.0.1"


class RelayConfig(msgspec.Struct):
    """Relay of link ``name``: ``a_to_b`` applies to bytes sent by a towards b."""

    run_id: str
    t0: float
    time_scale: float
    seed: int
    name: str
    a: str
    b: str
    a_to_b: Direction
    b_to_a: Direction
    targets: dict[str, Endpoint]  # "a"/"b" -> that node's own listening endpoint
    host: str = "127.0.0.1"
    mqtt: MqttAddress | None = None
    capture: str | None = None  # pcapng file of the link's classical traffic (qnet run --capture)
    capture_max_bytes: int = 100_000_000
    traffic_interval_s: float | None = None  # relay/<link>/traffic period (wall s); None: off


class DaemonAddress(msgspec.Struct):
    host: str
    port: int


class LinkEnds(msgspec.Struct):
    """A link a node is not an end of, as that node sees it: name and ends, no physics."""

    name: str
    a: str
    b: str

    @property
    def id(self) -> str:
        return self.name


class NodeView(msgspec.Struct):
    """What one node may know of the scenario (issue 7): every node's name, the links it is
    an end of with their physics, the other links' names and ends only, its own memory."""

    nodes: list[str]
    links: list[Link]
    other_links: list[LinkEnds]
    memory: NodeMemory
    duration_s: float
    hybrid: NodeHybrid | None = None  # its own [nodes.hybrid] (delay line, compensation)

    def link(self, name: str) -> Link | LinkEnds:
        for link in [*self.links, *self.other_links]:
            if link.id == name:
                return link
        raise KeyError(name)

    def link_between(self, a: str, b: str) -> Link | LinkEnds | None:
        return next((link for link in [*self.links, *self.other_links]
                     if {link.a, link.b} == {a, b}), None)

    def find_link(self, name: str | None, a: str, b: str) -> Link | LinkEnds | None:
        """The link called ``name``, or without a name the one between ``a`` and ``b``."""
        if name is None:
            return self.link_between(a, b)
        return next((link for link in [*self.links, *self.other_links] if link.id == name),
                    None)


class NodeApp(msgspec.Struct):
    """One app a node runs: its index in the scenario (tags the node's result entries), its
    kind and its validated spec as builtins (derived fields such as a pairs path resolved)."""

    index: int
    kind: str
    spec: dict


def node_view(sc: Scenario, name: str) -> NodeView:
    """Node ``name``'s part of the validated scenario."""
    mine = [link for link in sc.links if name in (link.a, link.b)]
    others = [LinkEnds(link.id, link.a, link.b) for link in sc.links
              if name not in (link.a, link.b)]
    return NodeView(nodes=[n.name for n in sc.nodes], links=mine, other_links=others,
                    memory=memory_of(sc, name), duration_s=sc.scenario.duration_s,
                    hybrid=next(n.hybrid for n in sc.nodes if n.name == name))


def node_apps(sc: Scenario, name: str) -> list[NodeApp]:
    """The apps whose kind runs them at node ``name`` (``AppKind.nodes``)."""
    return [NodeApp(i, kind_of(app).kind, msgspec.to_builtins(app))
            for i, app in enumerate(sc.apps) if name in kind_of(app).nodes(app)]


class NodeKms(msgspec.Struct):
    """The node's key service (docs/kms.md): its KME's port and certificate, the run's CA,
    its key database, every SAE of the run with its node, and the scenario's ``[kms]``."""

    port: int
    cert: str
    key: str
    ca: str
    database: str
    saes: dict[str, str]
    settings: Kms


class NodePorts(msgspec.Struct):
    """The ports a node listens on (from its first ready file), so a restarted node binds the
    same ones and the relays and programs told them at start still reach it."""

    tcp: dict[str, int]  # peer -> port
    udp: int
    tunnel: dict[str, int] | None = None  # destination -> port, for the node's programs


class NodeConfig(msgspec.Struct):
    """A node process: its identity, where the daemon and broker are, its apps and its view
    of the scenario (never the whole scenario: other links' physics stay out)."""

    run_id: str
    t0: float
    time_scale: float
    seed: int
    name: str
    token: str
    daemon: DaemonAddress
    mqtt: MqttAddress
    view: NodeView
    apps: list[NodeApp] = []
    host: str = "127.0.0.1"
    link_keys: dict[str, str] = {}  # peer -> hex secret of their link (channel hello MACs)
    tunnel: TunnelConfig | None = None  # carries user programs' connections (emulator/programs)
    kms: NodeKms | None = None  # the key service, when the scenario declares SAEs
    ports: NodePorts | None = None  # set for a restart: bind these (else any free port)
    restarted: bool = False  # a restart after a crash: serve, but do not run the apps again
    routing: Routing | None = None  # run nodes/net's routed plane (docs/net.md)
    netns: NodeNetns | None = None  # --netns with routing: its kernel routes follow routing


def child_arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--ready-file", required=True, type=Path)
    return parser.parse_args()


def read_config(path: Path, kind: type[T]) -> T:
    return msgspec.json.decode(path.read_bytes(), type=kind)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``path`` atomically (a reader never sees half of it), readable by its owner only."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when a stale tmp file had other bits
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_config(path: Path, config: msgspec.Struct) -> None:
    """Write a child's config (0600: it holds the child's token, keys and broker login)."""
    _write_private(path, msgspec.json.format(msgspec.json.encode(config)))


def write_ready(path: Path, **info: object) -> None:
    """Write the ready file atomically with the writer's pid (the supervisor checks it)."""
    info.setdefault("pid", os.getpid())
    _write_private(path, json.dumps(info).encode())
