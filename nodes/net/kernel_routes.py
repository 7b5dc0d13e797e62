"""The routing table into the node namespace's kernel table (``qnet run --netns``).

``kernel_table`` is pure (routing table in, kernel routes out); ``follow_routes`` is the node
task that installs it through ``ip -batch`` on every change, so programs' packets follow the
link-state reroutes. A destination routing has never reached keeps the static route the
orchestrator installed at start; one it reached and then lost becomes ``unreachable``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import trio

from emulator.netns.node_plan import NodeNetns
from emulator.netns.plan import Route as KernelRoute
from emulator.netns.routes import route_commands
from nodes.net.spf import Route

log = logging.getLogger("qnet.net.kernel")
EventSink = Callable[[str, dict], Awaitable[None]]  # (kind, fields)


def kernel_table(netns: NodeNetns, routes: Mapping[str, Route]) -> list[KernelRoute]:
    """Kernel routes for ``routes`` (destination node -> Route): each routed node address
    over the interface of its route's link, each other wire's subnets towards its end of
    lower routing cost (that cost falls at every hop, so the tables are loop-free)."""
    me = netns.node
    iface = {i.link: i for i in netns.interfaces}
    src4 = ipaddress.ip_address(netns.addr4[me])
    src6 = ipaddress.ip_address(netns.addr6[me])
    table: list[KernelRoute] = []

    def add(dest4: str, dest6: str, route: Route) -> None:
        via = iface.get(route.link)
        if via is None:  # a route over a link without a wire: nothing to install
            return
        table.append(KernelRoute(ipaddress.ip_network(dest4), ipaddress.ip_address(via.peer4),
                                 via.name, src4))
        table.append(KernelRoute(ipaddress.ip_network(dest6), ipaddress.ip_address(via.peer6),
                                 via.name, src6))

    for dest, route in sorted(routes.items()):
        if dest != me and dest in netns.addr4:
            add(f"{netns.addr4[dest]}/32", f"{netns.addr6[dest]}/128", route)
    for wire in netns.wires:
        ends = sorted((routes[end].cost, end) for end in (wire.a, wire.b) if end in routes)
        if ends:
            add(wire.net4, wire.net6, routes[ends[0][1]])
    return table


def destinations(netns: NodeNetns, dests: set[str]) -> list[str]:
    """The kernel destinations (node addresses, wire subnets) that lead to nodes ``dests``."""
    found = [f"{netns.addr4[d]}/32" for d in sorted(dests) if d in netns.addr4]
    found += [f"{netns.addr6[d]}/128" for d in sorted(dests) if d in netns.addr6]
    for wire in netns.wires:
        if wire.a in dests or wire.b in dests:
            found += [wire.net4, wire.net6]
    return found


@dataclass
class KernelRoutes:
    """Sans-I/O state: which destinations routing has reached, what is installed."""

    netns: NodeNetns
    reached: set[str] = field(default_factory=set)
    installed: list[str] | None = None

    def commands(self, routes: Mapping[str, Route]) -> list[str]:
        """``ip -batch`` lines that make the kernel follow ``routes`` ([] if it already does)."""
        table = kernel_table(self.netns, routes)
        self.reached |= {d for d in routes if d != self.netns.node}
        kept = {str(r.dest) for r in table}
        lost = [d for d in destinations(self.netns, self.reached) if d not in kept]
        lines = route_commands(table) + [f"route replace unreachable {d}" for d in lost]
        if lines == self.installed:
            return []
        return lines


async def run_ip_batch(lines: list[str]) -> str | None:
    """Run ``ip -batch -`` in this process's namespace; None, or ip's error message."""
    done = await trio.run_process(["ip", "-batch", "-"], stdin="\n".join(lines).encode() + b"\n",
                                  capture_stdout=True, capture_stderr=True, check=False)
    return None if done.returncode == 0 else done.stderr.decode(errors="replace").strip()


async def follow_routes(net, netns: NodeNetns, clock, events: EventSink | None = None,
                        ip=run_ip_batch) -> None:
    """Until cancelled: at every change of ``net``'s routing table (NetService) install it;
    a change during an install is caught up at once after it. Emits ``kernel_routes``."""
    state = KernelRoutes(netns)
    while True:
        routes = dict(net.routes)
        lines = state.commands(routes)
        if not lines:
            await net.routes_changed()
            continue
        error = await ip(lines)
        state.installed = lines
        fields = {"at": clock.now(), "routes": sum(1 for x in lines if " via " in x),
                  "unreachable": sum(1 for x in lines if " unreachable " in x),
                  "next_hops": ",".join(f"{d}>{r.next_hop}" for d, r in sorted(routes.items())
                                        )[:200]}
        if error is not None:
            log.warning("kernel routes: %s", error)
            fields["error"] = error[:200]
        if events is not None:
            await events("kernel_routes", fields)
