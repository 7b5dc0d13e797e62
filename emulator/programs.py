"""User programs on nodes (``[[nodes.run]]``): their spec, environment, routes and results.

A program is any executable started beside its node once the run has begun, as its own
supervised child with its own log (``<node>.<name>.log``). It learns everything from its
environment (``program_env``): which node it is on, where to reach each other node's program
(``QNET_PEER_<NODE>=127.0.0.1:<port>``, a local port of its own node that the node tunnels
hop by hop over the classical links: nodes/services/tunnel), where to listen for the other
programs (``QNET_LISTEN``), and the node's key service (``QNET_KME_URL`` etc., when the node
runs one). Its exit status lands in result.json ``programs`` (metric
``programs.<node>:<name>.exit_code``), the last JSON-object line of its log as ``result``;
``wait = true`` makes the run wait for it to end.
"""

from __future__ import annotations

import re
import shutil
import socket
import sys
from typing import Annotated

import msgspec
import trio
from msgspec import Meta, Struct

from emulator.apps import kind_of
from emulator.supervise import Child

ProgramName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
PROGRAM_WAIT_S = 60.0  # wall: programs with wait = true, after the apps' results


class NodeProgram(Struct, forbid_unknown_fields=True):
    """``[[nodes.run]]``: ``command`` (``python`` as its first word is this Python), run from
    the current directory; ``listen`` if other nodes' programs connect to it."""

    command: Annotated[list[str], Meta(min_length=1)]
    name: ProgramName | None = None  # default: the command's base name
    listen: bool = False
    wait: bool = False  # the run waits (up to PROGRAM_WAIT_S) for it to exit
    sae: str | None = None  # the SAE id it acts as (default: the node's first SAE, if any)
    env: dict[str, str] = {}

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.command[-1].rsplit("/", 1)[-1]) or "program"


class ProgramError(ValueError):
    """A ``[[nodes.run]]`` table that cannot work (its message starts with the field path)."""


def check_programs(nodes: list) -> None:
    """Names unique per node, at most one listening program per node, a command that exists,
    an SAE of the node."""
    for i, node in enumerate(nodes):
        seen: set[str] = set()
        listening = 0
        for k, program in enumerate(node.run):
            if program.label in seen:
                raise ProgramError(f"nodes[{i}].run[{k}].name: duplicate program "
                                   f"{program.label!r} on {node.name}")
            seen.add(program.label)
            first = program.command[0]
            if first != "python" and shutil.which(first) is None:
                raise ProgramError(f"nodes[{i}].run[{k}].command: {first!r} is not an "
                                   "executable (on PATH, or a path from the current directory)")
            if program.sae is not None and program.sae not in {s.id for s in node.sae}:
                raise ProgramError(f"nodes[{i}].run[{k}].sae: {program.sae!r} is not an SAE "
                                   f"of {node.name} ([[nodes.sae]])")
            listening += program.listen
            if listening > 1:
                raise ProgramError(f"nodes[{i}].run[{k}].listen: only one program per node "
                                   "can listen (the node's tunnels end there)")


def env_name(node: str) -> str:
    """``QNET_PEER_<NODE>``: the node name upper-cased, other characters as ``_``."""
    return "QNET_PEER_" + re.sub(r"[^A-Za-z0-9]", "_", node).upper()


def next_hops(nodes: list[str], links: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """Static fewest-hop routes: node -> destination -> neighbour (BFS, ties in file order).

    Stands in for the routed network until a routing shell exists (docs/decisions.md)."""
    adjacency: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in links:
        adjacency[a].append(b)
        adjacency[b].append(a)
    tables: dict[str, dict[str, str]] = {}
    for source in nodes:
        first: dict[str, str] = {}
        frontier = [(n, n) for n in adjacency[source]]
        seen = {source}
        while frontier:
            following = []
            for node, hop in frontier:
                if node in seen:
                    continue
                seen.add(node)
                first[node] = hop
                following += [(n, hop) for n in adjacency[node] if n not in seen]
            frontier = following
        tables[source] = first
    return tables


class TunnelConfig(msgspec.Struct):
    """What a node needs to carry its programs' connections (NodeConfig.tunnel)."""

    routes: dict[str, str]  # destination node -> next hop
    listen_port: int | None = None  # this node's listening program, if any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a program to listen on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command_line(program: NodeProgram) -> list[str]:
    return [sys.executable if i == 0 and part == "python" else part
            for i, part in enumerate(program.command)]


def program_env(node: str, program: NodeProgram, tunnel_ports: dict[str, int],
                listen_port: int | None, kms: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one program (see the module docstring; docs/kms.md lists it)."""
    env = {"QNET_NODE": node, "QNET_PROGRAM": program.label,
           "QNET_PEERS": ",".join(f"{peer}=127.0.0.1:{port}"
                                  for peer, port in sorted(tunnel_ports.items()))}
    for peer, port in tunnel_ports.items():
        env[env_name(peer)] = f"127.0.0.1:{port}"
    if listen_port is not None:
        env["QNET_LISTEN"] = f"127.0.0.1:{listen_port}"
    env.update(kms or {})
    env.update(program.env)
    return env


ENTER = ["-m", "emulator.netns.enter", "--"]  # the --netns launcher (emulator/netns/enter.py)


def user_command(child) -> list[str]:
    """The program's own command line (without the ``--netns`` launcher in front of it)."""
    argv = child.argv
    return argv[len(ENTER) + 1:] if argv[1:len(ENTER) + 1] == ENTER else argv


def programs_section(children: list) -> list[dict]:
    """result.json ``programs``: one entry per program child (name ``<node>:<program>``)."""
    out = []
    for child in children:
        if child.role == "program":  # child name "<node>.<program>"
            node, _, label = child.name.rpartition(".")
            out.append({"name": f"{node}:{label}", "node": node, "command": user_command(child),
                        "exit_code": child.exit_code, "log": str(child.log_path),
                        "result": program_result(child.log_path)})
    return out


def program_result(log_path, tail_bytes: int = 1 << 20):
    """A program's own result: the last line of its log (stdout and stderr) that is a JSON
    object, e.g. examples/wireguard-qkd's key hashes; None if it printed none."""
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log.seek(0, 2) - tail_bytes))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return msgspec.json.decode(line)
            except msgspec.DecodeError:
                continue
    return None


def tunnel_configs(scenario) -> dict[str, TunnelConfig]:
    """Per node, its tunnel config; empty when no node runs a program and no app kind asks
    for tunnels (``AppKind.extra["tunnels"]``, e.g. kms.relay's KME peering)."""
    if not any(node.run for node in scenario.nodes) and not any(
            kind_of(app).extra.get("tunnels") for app in scenario.apps):
        return {}
    routes = next_hops([n.name for n in scenario.nodes],
                       [(link.a, link.b) for link in scenario.links])
    return {node.name: TunnelConfig(routes=routes[node.name],
                                    listen_port=free_port() if any(p.listen for p in node.run)
                                    else None)
            for node in scenario.nodes}


def kms_environment(kms, scenario):
    """``kms_env`` for ``program_children`` from the run's ``emulator.pki.KmsSetup`` (None
    without a key service): the KME variables of the program's SAE (``sae``, else its node's
    first) and ``QNET_PEER_SAE_<NODE>``, the first SAE id of every other node that has one."""
    if kms is None:
        return None
    first = {n.name: n.sae[0].id for n in scenario.nodes if n.sae}

    def env(node: str, program: NodeProgram) -> dict[str, str]:
        out = {env_name(other).replace("QNET_PEER_", "QNET_PEER_SAE_", 1): sae
               for other, sae in first.items() if other != node}
        sae = program.sae or first.get(node)
        if sae is not None:
            out.update(kms.environment(sae))
        return out

    return env


def program_children(scenario, run_dir, tunnels: dict[str, TunnelConfig],
                     node_ready: dict[str, dict], tier: int,
                     kms_env=None, netns: dict[str, tuple[str, str]] | None = None,
                     ip_env=None) -> list:
    """One supervised child per ``[[nodes.run]]`` (its exit is never a run failure).

    ``node_ready`` holds each node's ready file (its tunnel ports); ``kms_env(node, program)``
    gives the key-service variables of a node's program, if the node runs a KME. With
    ``--netns``, ``netns[node]`` the namespaces (network, PID of their children) its programs
    start in and ``ip_env(node)``
    their address variables (emulator/netns/setup.py)."""
    children = []
    for node in scenario.nodes:
        for program in node.run:
            env = program_env(node.name, program, node_ready[node.name].get("tunnel", {}),
                              tunnels[node.name].listen_port,
                              kms_env(node.name, program) if kms_env is not None else None)
            if ip_env is not None:
                env = {**ip_env(node.name), **env}
            children.append(Child(
                name=f"{node.name}.{program.label}", role="program",
                argv=(command_line(program) if not netns else
                      [sys.executable, *ENTER, *command_line(program)]),
                log_path=run_dir / f"{node.name}.{program.label}.log",
                tier=tier, env=env, expected_exit=True,
                netns=netns[node.name][0] if netns else None,
                pidns=netns[node.name][1] if netns else None))
    return children


async def wait_programs(scenario, children: list, timeout: float = PROGRAM_WAIT_S) -> None:
    """Give the programs with ``wait = true`` up to ``timeout`` wall seconds to exit."""
    waiting = {f"{n.name}.{p.label}" for n in scenario.nodes for p in n.run if p.wait}
    with trio.move_on_after(timeout):
        for child in children:
            if child.name in waiting and child.process is not None:
                await child.process.wait()
