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

from emulator.scenario import LinkEntanglement, NodeMemory, QuantumLink

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
    entanglement_links: list[DaemonEntanglementLink] = []


class Direction(msgspec.Struct):
    """One direction of a classical link, in emulated seconds."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
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


class DaemonAddress(msgspec.Struct):
    host: str
    port: int


class NodeConfig(msgspec.Struct):
    """A node process: its identity, where the daemon and broker are, and the scenario."""

    run_id: str
    t0: float
    time_scale: float
    seed: int
    name: str
    token: str
    daemon: DaemonAddress
    mqtt: MqttAddress
    scenario: dict  # the validated scenario as builtins; the node re-validates it
    host: str = "127.0.0.1"
    link_keys: dict[str, str] = {}  # peer -> hex secret of their link (channel hello MACs)


def child_arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--ready-file", required=True, type=Path)
    return parser.parse_args()


def read_config(path: Path, kind: type[T]) -> T:
    return msgspec.json.decode(path.read_bytes(), type=kind)


def write_config(path: Path, config: msgspec.Struct) -> None:
    path.write_bytes(msgspec.json.format(msgspec.json.encode(config)))


def write_ready(path: Path, **info: object) -> None:
    """Write the ready file atomically, so a reader never sees half of it."""
    info.setdefault("pid", os.getpid())
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)
