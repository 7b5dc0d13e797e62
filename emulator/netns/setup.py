"""What ``qnet run --netns`` adds to a run: configs of the namespace holders and wires, static
routes, the peers' IP endpoints and the programs' address variables (docs/netns.md)."""

from __future__ import annotations

import os
import shutil

import trio

from emulator import telemetry
from emulator.child_config import Direction, Endpoint, MqttAddress
from emulator.netns.holder import NamespaceConfig
from emulator.netns.plan import NetnsPlan, make_plan, routes_of, static_next_hops
from emulator.netns.routes import route_commands
from emulator.netns.shaper import WireConfig, WireEnd
from emulator.relay_telemetry import TRAFFIC_INTERVAL_S

NODE_HOST = "0.0.0.0"  # a node binds every address of its own namespace (wires, node address)


def why_not_available() -> str | None:
    """None when this process can build namespaces, else what is missing (for exit 2)."""
    if os.geteuid() != 0:
        return "--netns needs root (network namespaces, TAP devices); run qnet as root or " \
               "without --netns (relays on 127.0.0.1)"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"--netns needs the {tool!r} command (Debian: iproute2, util-linux)"
    if not os.path.exists("/dev/net/tun"):
        return "--netns needs /dev/net/tun (TUN/TAP)"
    return None


def holder_config(plan: NetnsPlan, run_id: str, node: str, forward: list[int]) -> NamespaceConfig:
    return NamespaceConfig(run_id=run_id, node=node, addr4=str(plan.addr4[node]),
                           addr6=str(plan.addr6[node]), forward=forward)


def wire_config(plan: NetnsPlan, link, netns: dict[str, str], *, run_id: str, t0: float,
                time_scale: float, seed: int, a_to_b: Direction, b_to_a: Direction,
                mqtt: MqttAddress | None, capture: str | None = None,
                capture_max_bytes: int = 100_000_000,
                traffic_interval_s: float | None = None) -> WireConfig:
    """The wire of ``link`` between the namespaces ``netns[node]`` of its two ends."""
    wire = plan.wire(link.id)

    def end(node: str) -> WireEnd:
        iface = wire.ends[node]
        return WireEnd(node=node, netns=netns[node], ifname=iface.name, addr4=str(iface.addr4),
                       addr6=str(iface.addr6), mtu=iface.mtu)

    return WireConfig(run_id=run_id, t0=t0, time_scale=time_scale, seed=seed, name=link.id,
                      a=end(link.a), b=end(link.b), a_to_b=a_to_b, b_to_a=b_to_a, mqtt=mqtt,
                      capture=capture, capture_max_bytes=capture_max_bytes,
                      traffic_interval_s=traffic_interval_s)


async def install_static_routes(plan: NetnsPlan, netns: dict[str, str]) -> None:
    """Static shortest-path routes into every node's namespace (``ip -batch`` via nsenter)."""
    for node, path in netns.items():
        lines = route_commands(routes_of(plan, node, static_next_hops(plan, node)))
        if lines:
            await trio.run_process(["nsenter", f"--net={path}", "ip", "-batch", "-"],
                                   stdin="\n".join(lines).encode() + b"\n", capture_stderr=True)


def peer_endpoints(plan: NetnsPlan, links, ready: dict[str, dict]) -> dict[str, dict[str, Endpoint]]:
    """Every node's neighbours at their addresses on the shared wire (the first, if several):
    no relay, the wire shapes the frames, and a link's channel always crosses its own wire,
    whatever the routes to node addresses say (a cut wire cuts its channel, as a relay's)."""
    peers: dict[str, dict[str, Endpoint]] = {n: {} for n in plan.nodes}
    for link in links:
        wire = plan.wire(link.id)
        for node, peer in ((link.a, link.b), (link.b, link.a)):
            peers[node].setdefault(peer, Endpoint(
                tcp=ready[peer]["tcp"][node], udp=ready[peer]["udp"],
                host=str(wire.ends[node].peer4)))
    return peers


def env_suffix(node: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in node).upper()


def address_env(plan: NetnsPlan, node: str) -> dict[str, str]:
    """A program's address variables: ``QNET_ADDR``/``QNET_ADDR6`` (its node address),
    ``QNET_PEER_ADDR_<NODE>``/``QNET_PEER_ADDR6_<NODE>`` (every other node's),
    ``QNET_WIRE_ADDR_<PEER>``/``QNET_PEER_WIRE_ADDR_<PEER>`` (own / neighbour's address on
    their wire, IPv4; ``..._ADDR6_`` for IPv6) and ``QNET_IFACE_<PEER>``."""
    env = {"QNET_ADDR": str(plan.addr4[node]), "QNET_ADDR6": str(plan.addr6[node])}
    for other in plan.nodes:
        if other != node:
            env[f"QNET_PEER_ADDR_{env_suffix(other)}"] = str(plan.addr4[other])
            env[f"QNET_PEER_ADDR6_{env_suffix(other)}"] = str(plan.addr6[other])
    for iface in reversed(plan.interfaces(node)):  # the first wire to a neighbour wins
        peer = env_suffix(iface.peer)
        env[f"QNET_WIRE_ADDR_{peer}"] = str(iface.addr4.ip)
        env[f"QNET_WIRE_ADDR6_{peer}"] = str(iface.addr6.ip)
        env[f"QNET_PEER_WIRE_ADDR_{peer}"] = str(iface.peer4)
        env[f"QNET_PEER_WIRE_ADDR6_{peer}"] = str(iface.peer6)
        env[f"QNET_IFACE_{peer}"] = iface.name
    return env


async def start_network(supervisor, state, forward: list[int], direction, mqtt_address,
                        tier: int, ready_timeout: float, capture: bool = False,
                        capture_max_bytes: int = 100_000_000):
    """Start a namespace holder per node, then a wire per link, then the static routes.

    Returns (plan, {node: (network namespace, PID namespace of its children)}, wires). ``forward``: the root-namespace
    ports the nodes reach on 127.0.0.1 (daemon, broker); ``direction(link)`` a link's
    ``Direction``; ``mqtt_address(user)`` a login; ``capture``: each wire writes
    ``capture-<link>.pcapng`` in the run folder (``--capture``)."""
    scenario, meta = state.scenario, state.scenario.scenario
    plan = make_plan(scenario)
    holders = [state.child(f"netns-{node}", "netns", "emulator.netns.holder",
                           holder_config(plan, state.run_id, node, forward), tier=tier)
               for node in plan.nodes]
    await supervisor.start_all(holders, ready_timeout=ready_timeout)
    netns = {node: child.ready["netns"] for node, child in zip(plan.nodes, holders)}
    pidns = {node: child.ready["pidns"] for node, child in zip(plan.nodes, holders)}
    wires = [state.child(f"relay-{link.id}", "relay", "emulator.netns.shaper", wire_config(
        plan, link, netns, run_id=state.run_id, t0=state.t0, time_scale=meta.time_scale,
        seed=meta.seed, a_to_b=direction(link), b_to_a=direction(link),
        mqtt=mqtt_address(telemetry.relay_user(link.id)),
        capture=str(state.run_dir / f"capture-{link.id}.pcapng") if capture else None,
        capture_max_bytes=capture_max_bytes, traffic_interval_s=(
            TRAFFIC_INTERVAL_S if link.quantum is not None and link.quantum.raman is not None
            else None)),
        tier=tier) for link in scenario.links]
    await supervisor.start_all(wires, ready_timeout=ready_timeout)
    await install_static_routes(plan, netns)
    return plan, {node: (netns[node], pidns[node]) for node in plan.nodes}, wires
