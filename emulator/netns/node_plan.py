"""A node's share of the ``--netns`` address plan, sent in its ``NodeConfig.netns``.

With it the node turns its routing table into kernel routes (nodes/net/kernel_routes.py):
every node address, its own interfaces, and the other wires' subnets and ends. Addresses
only: no lengths or other physics of links it is not on (information separation, issue 7).
"""

from __future__ import annotations

import msgspec

from emulator.netns.plan import NetnsPlan


class NetnsInterface(msgspec.Struct, frozen=True):
    """One of the node's wires: interface name, link, neighbour and its addresses there."""

    name: str
    link: str
    peer: str
    peer4: str
    peer6: str


class NetnsWire(msgspec.Struct, frozen=True):
    """A wire the node is not on: its link, ends and subnets."""

    link: str
    a: str
    b: str
    net4: str
    net6: str


class NodeNetns(msgspec.Struct, frozen=True):
    """What node ``node``'s kernel table needs to follow its routing table."""

    node: str
    addr4: dict[str, str]  # every node's node address (on its loopback)
    addr6: dict[str, str]
    interfaces: list[NetnsInterface]
    wires: list[NetnsWire]


def node_netns(plan: NetnsPlan, node: str) -> NodeNetns:
    """``node``'s share of ``plan``."""
    return NodeNetns(
        node=node,
        addr4={n: str(a) for n, a in plan.addr4.items()},
        addr6={n: str(a) for n, a in plan.addr6.items()},
        interfaces=[NetnsInterface(i.name, i.link, i.peer, str(i.peer4), str(i.peer6))
                    for i in plan.interfaces(node)],
        wires=[NetnsWire(w.name, w.a, w.b, str(w.net4), str(w.net6))
               for w in plan.wires if node not in w.ends])
