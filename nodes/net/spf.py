"""Shortest paths over a link-state database, and the link metric they are computed with.

Pure functions of the LSAs: every router computes the same routes from the same database.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

from nodes.net.messages import LinkAdvert, Lsa

MIN_COST = 1e-6  # every link costs something, so a shortest path is loop-free hop by hop


@dataclass(frozen=True)
class Metric:
    """A link's cost: the weighted sum of its metrics, floored at ``MIN_COST``.

    Every router of a network must use the same metric (the routes are then consistent);
    an unmeasured RTT counts as ``rtt_default_ms``."""

    length_km: float = 0.0
    rtt_ms: float = 0.0
    loss_db: float = 0.0
    hop: float = 0.0
    rtt_default_ms: float = 1.0

    @classmethod
    def named(cls, name: str) -> Metric:
        """The single-metric presets: ``length_km``, ``rtt``, ``loss_db``, ``hops``."""
        presets = {"length_km": cls(length_km=1.0), "rtt": cls(rtt_ms=1.0),
                   "loss_db": cls(loss_db=1.0), "hops": cls(hop=1.0)}
        if name not in presets:
            raise ValueError(f"unknown metric {name!r} (one of {sorted(presets)})")
        return presets[name]

    def cost(self, advert: LinkAdvert) -> float:
        rtt = self.rtt_default_ms if advert.rtt_ms is None else advert.rtt_ms
        total = (self.length_km * advert.length_km + self.rtt_ms * rtt
                 + self.loss_db * advert.loss_db + self.hop)
        return max(total, MIN_COST)


@dataclass(frozen=True)
class Route:
    """How to reach ``dst``: send on ``link`` to ``next_hop``; ``path`` starts at us."""

    dst: str
    link: str
    next_hop: str
    cost: float
    path: tuple[str, ...]


def shortest_paths(root: str, lsdb: Mapping[str, Lsa], metric: Metric) -> dict[str, Route]:
    """Dijkstra over the two-way adjacencies of ``lsdb``; ties go to the smallest first hop
    (neighbour name, then link name), so every router breaks them the same way."""
    two_way = {(o, a.neighbour, a.link) for o, lsa in lsdb.items() for a in lsa.links}
    best: dict[str, tuple[float, tuple[str, str], tuple[str, ...]]] = {}
    done: set[str] = set()
    heap: list[tuple[float, tuple[str, str], str, tuple[str, ...]]] = [(0.0, ("", ""), root, (root,))]
    while heap:
        dist, first, node, path = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        if node != root:
            best[node] = (dist, first, path)
        lsa = lsdb.get(node)
        if lsa is None:
            continue
        for adv in lsa.links:
            nxt = adv.neighbour
            if nxt in done or (nxt, node, adv.link) not in two_way:
                continue
            cand = (dist + metric.cost(adv), (nxt, adv.link) if node == root else first)
            if nxt not in best or cand < best[nxt][:2]:
                best[nxt] = (*cand, path + (nxt,))
                heapq.heappush(heap, (cand[0], cand[1], nxt, path + (nxt,)))
    return {dst: Route(dst, first[1], first[0], dist, path)
            for dst, (dist, first, path) in sorted(best.items())}
