"""Kernel routes of a node's namespace from a routing table (destination node -> neighbour).

``install_routes`` is the hook for the routing layer: the static shortest paths are installed
at start (``static_next_hops``); a routing shell running in the node's process (which is inside
the namespace) can call it again with its own table whenever its routes change. Routes are
``replace``d, and routes of the previous table that the new one lacks are deleted.
"""

from __future__ import annotations

from emulator.netns.kernel import ip_batch
from emulator.netns.plan import NetnsPlan, Route, routes_of, static_next_hops


def route_commands(routes: list[Route], previous: list[Route] = ()) -> list[str]:
    """``ip -batch`` lines that make the namespace's table hold ``routes`` (and no longer
    the ``previous`` ones it does not repeat)."""
    lines = [f"route replace {r.dest} via {r.gateway} dev {r.device} src {r.src}"
             for r in routes]
    kept = {r.dest for r in routes}
    lines += [f"route del {r.dest}" for r in previous if r.dest not in kept]
    return lines


def install_routes(plan: NetnsPlan, node: str, next_hops: dict[str, str] | None = None,
                   previous: list[Route] = ()) -> list[Route]:
    """Install ``node``'s routes for ``next_hops`` (default: static shortest paths) in the
    CURRENT namespace; returns them (pass them as ``previous`` next time)."""
    table = static_next_hops(plan, node) if next_hops is None else next_hops
    routes = routes_of(plan, node, table)
    ip_batch(route_commands(routes, previous))
    return routes
