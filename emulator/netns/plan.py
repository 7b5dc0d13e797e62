"""The address plan of ``qnet run --netns``: every node's addresses, interfaces and routes.

Pure functions of the scenario (no kernel calls), so the plan is tested without root and every
process of a run derives the same plan. The plan (docs/netns.md):

* link ``i`` (scenario order): ``classical.subnet`` if given, else ``10.<i//256>.<i%256>.0/24``;
  end ``a`` takes the first host address, ``b`` the second. IPv6 ``fd00:716e:6574:<i>::/64``,
  ``a`` = ``::1``, ``b`` = ``::2``. MTU ``classical.mtu``.
* node ``j``: a node address on its loopback, ``10.255.0.<j+1>/32`` and
  ``fd00:716e:6574:ffff::<j+1>/128``, reachable from every node.
* the interface of a link in an end's namespace is ``q-<peer>`` (``qnl<i>`` when that does not
  fit in 15 characters or two links join the same pair).
* static routes: shortest paths by ``length_km`` to every other node address and to every link
  subnet the node is not on (``static_next_hops``, ``routes_of``).
"""

from __future__ import annotations

import heapq
import ipaddress
import re
from dataclasses import dataclass

NODE_NET4 = ipaddress.IPv4Network("10.255.0.0/16")
NODE_NET6 = ipaddress.IPv6Network("fd00:716e:6574:ffff::/64")
LINK_NET6 = ipaddress.IPv6Network("fd00:716e:6574::/48")
IFNAMSIZ = 15
HOP_EPSILON_KM = 1e-6  # added per hop, so zero-length links still make paths loop-free


class PlanError(ValueError):
    """A scenario whose addresses cannot be planned (overlapping subnets, too many nodes)."""


@dataclass(frozen=True)
class Interface:
    """One end of a wire in a node's namespace: its name, the link, addresses, MTU."""

    name: str
    link: str
    peer: str
    addr4: ipaddress.IPv4Interface
    addr6: ipaddress.IPv6Interface
    peer4: ipaddress.IPv4Address
    peer6: ipaddress.IPv6Address
    mtu: int


@dataclass(frozen=True)
class Route:
    """A kernel route in one node's namespace: ``dest`` via ``gateway`` on ``device``, from
    the node address ``src`` (so a reply from an unconnected socket, sourced by the route back,
    comes from the address the request went to: the peer's node address)."""

    dest: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address
    device: str
    src: ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class WirePlan:
    """A link as a wire: name, ends, subnets, and each end's interface."""

    name: str
    a: str
    b: str
    length_km: float
    net4: ipaddress.IPv4Network
    net6: ipaddress.IPv6Network
    ends: dict[str, Interface]  # node -> its interface


@dataclass(frozen=True)
class NetnsPlan:
    nodes: list[str]
    addr4: dict[str, ipaddress.IPv4Address]  # node address (on lo)
    addr6: dict[str, ipaddress.IPv6Address]
    wires: list[WirePlan]

    def interfaces(self, node: str) -> list[Interface]:
        return [w.ends[node] for w in self.wires if node in w.ends]

    def wire(self, name: str) -> WirePlan:
        return next(w for w in self.wires if w.name == name)


def _interface_names(node: str, peers: list[tuple[int, str]]) -> dict[int, str]:
    """Interface names of ``node``'s links (link index, peer): ``q-<peer>`` when unique and
    valid, else ``qnl<index>``."""
    counts: dict[str, int] = {}
    for _, peer in peers:
        counts[peer] = counts.get(peer, 0) + 1
    names = {}
    for index, peer in peers:
        name = f"q-{peer}"
        if counts[peer] > 1 or len(name) > IFNAMSIZ or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            name = f"qnl{index}"
        names[index] = name
    return names


def link_subnet(index: int, subnet: str | None) -> ipaddress.IPv4Network:
    if subnet is not None:
        try:
            net = ipaddress.IPv4Network(subnet, strict=True)
        except ValueError as exc:
            raise PlanError(f"links[{index}].classical.subnet: {exc}") from None
        if net.prefixlen > 30:
            raise PlanError(f"links[{index}].classical.subnet: {subnet} has no room for two "
                            "hosts (at most /30)")
        return net
    if index >= 255 * 256:
        raise PlanError("--netns: the default plan has room for 65280 links")
    return ipaddress.IPv4Network(f"10.{index // 256}.{index % 256}.0/24")


def make_plan(scenario) -> NetnsPlan:
    """The plan of ``scenario`` (a validated ``emulator.scenario.Scenario``)."""
    nodes = [n.name for n in scenario.nodes]
    if len(nodes) > 65000:
        raise PlanError("--netns: at most 65000 nodes")
    addr4 = {n: NODE_NET4[j + 1] for j, n in enumerate(nodes)}
    addr6 = {n: NODE_NET6[j + 1] for j, n in enumerate(nodes)}
    peers: dict[str, list[tuple[int, str]]] = {n: [] for n in nodes}
    for i, link in enumerate(scenario.links):
        peers[link.a].append((i, link.b))
        peers[link.b].append((i, link.a))
    names = {n: _interface_names(n, peers[n]) for n in nodes}
    wires: list[WirePlan] = []
    for i, link in enumerate(scenario.links):
        net4 = link_subnet(i, link.classical.subnet)
        for other in wires:
            if net4.overlaps(other.net4):
                raise PlanError(f"links[{i}].classical.subnet: {net4} overlaps {other.net4} "
                                f"of link {other.name}")
        if net4.overlaps(NODE_NET4):
            raise PlanError(f"links[{i}].classical.subnet: {net4} overlaps the node addresses "
                            f"{NODE_NET4}")
        net6 = ipaddress.IPv6Network(f"{LINK_NET6[0] + (i << 64)}/64")
        mtu = link.classical.mtu
        hosts4 = (net4[1], net4[2])
        hosts6 = (net6[1], net6[2])
        ends = {}
        for k, (node, peer) in enumerate(((link.a, link.b), (link.b, link.a))):
            ends[node] = Interface(
                name=names[node][i], link=link.id, peer=peer,
                addr4=ipaddress.IPv4Interface(f"{hosts4[k]}/{net4.prefixlen}"),
                addr6=ipaddress.IPv6Interface(f"{hosts6[k]}/64"),
                peer4=hosts4[1 - k], peer6=hosts6[1 - k], mtu=mtu)
        wires.append(WirePlan(link.id, link.a, link.b, link.length_km, net4, net6, ends))
    return NetnsPlan(nodes, addr4, addr6, wires)


def distances(plan: NetnsPlan, source: str) -> tuple[dict[str, float], dict[str, str]]:
    """Dijkstra from ``source`` by ``length_km`` (+ a tiny per-hop cost): distance to each
    reachable node and the first hop (neighbour) towards it; ties go to the earlier link."""
    adjacency: dict[str, list[tuple[float, str]]] = {n: [] for n in plan.nodes}
    for wire in plan.wires:
        cost = wire.length_km + HOP_EPSILON_KM
        adjacency[wire.a].append((cost, wire.b))
        adjacency[wire.b].append((cost, wire.a))
    dist = {source: 0.0}
    first: dict[str, str] = {}
    order = 0
    heap: list[tuple[float, int, str, str | None]] = [(0.0, order, source, None)]
    done: set[str] = set()
    while heap:
        d, _, node, hop = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        if hop is not None:
            first[node] = hop
        for cost, other in adjacency[node]:
            if other not in done and d + cost < dist.get(other, float("inf")):
                dist[other] = d + cost
                order += 1
                heapq.heappush(heap, (d + cost, order, other, hop or other))
    return dist, first


def static_next_hops(plan: NetnsPlan, node: str) -> dict[str, str]:
    """Destination node -> neighbour, on shortest paths by length (the static routes)."""
    return distances(plan, node)[1]


def routes_of(plan: NetnsPlan, node: str, next_hops: dict[str, str]) -> list[Route]:
    """The kernel routes of ``node`` for a routing table ``next_hops`` (destination node ->
    neighbour): every other node address, and every link subnet ``node`` is not on, towards
    the nearer end of that link (loop-free: that distance falls at every hop)."""
    mine: dict[str, Interface] = {}
    for iface in plan.interfaces(node):
        mine.setdefault(iface.peer, iface)  # the first link to each neighbour carries it
    dist = distances(plan, node)[0]

    def via(neighbour: str) -> list[tuple[ipaddress._BaseAddress, str]]:
        iface = mine[neighbour]
        return [(iface.peer4, iface.name), (iface.peer6, iface.name)]

    src4, src6 = plan.addr4[node], plan.addr6[node]
    routes: list[Route] = []
    for dest, neighbour in next_hops.items():
        if dest == node or neighbour not in mine:
            continue
        (gw4, dev), (gw6, _) = via(neighbour)
        routes.append(Route(ipaddress.IPv4Network(f"{plan.addr4[dest]}/32"), gw4, dev, src4))
        routes.append(Route(ipaddress.IPv6Network(f"{plan.addr6[dest]}/128"), gw6, dev, src6))
    for wire in plan.wires:
        if node in wire.ends:
            continue
        ends = [end for end in (wire.a, wire.b) if end in next_hops]
        if not ends:
            continue
        nearer = min(ends, key=lambda end: dist.get(end, float("inf")))
        neighbour = next_hops[nearer]
        if neighbour not in mine:
            continue
        (gw4, dev), (gw6, _) = via(neighbour)
        routes.append(Route(wire.net4, gw4, dev, src4))
        routes.append(Route(wire.net6, gw6, dev, src6))
    return routes
