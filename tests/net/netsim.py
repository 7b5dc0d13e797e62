"""In-memory network of routing cores: per-link delay, cuts, a virtual clock (discrete events).

Every message crosses the wire format (``encode``/``decode``), so the cores see only what a
socket would carry. Each router also has a ``Forwarder``; ``endpoints`` (apps at a node) send
and receive routed frames through them. Bounded: ``run_until`` stops at its time limit or after
``max_events``.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from nodes.net.forwarding import Deliver, Drop, Forward, Forwarder
from nodes.net.linkstate import (
    LinkConfig,
    LinkStateRouter,
    NeighbourDown,
    NeighbourUp,
    RoutesChanged,
    RoutingConfig,
    Send,
)
from nodes.net.messages import RoutedFrame, decode, encode


class Endpoint(Protocol):
    """An app at a node: frames in, (dst, proto, payload) out, with its own deadline."""

    def on_frame(self, frame: RoutedFrame, now: float) -> None: ...
    def on_routes(self, routes: dict, now: float) -> None: ...
    def poll(self, now: float) -> list[tuple[str, str, bytes]]: ...
    def next_deadline(self) -> float | None: ...


@dataclass
class SimLink:
    a: str
    b: str
    delay: float
    length_km: float = 1.0
    loss_db: float = 0.0
    cut: bool = False
    drop: float = 0.0  # probability that a message on this link is lost


@dataclass
class NetSim:
    """Routers on named links; events are (time, order, kind, args)."""

    config: RoutingConfig
    links: dict[str, SimLink]
    now: float = 0.0
    routers: dict[str, LinkStateRouter] = field(default_factory=dict)
    log: list[tuple[float, str, object]] = field(default_factory=list)
    messages: int = 0
    _queue: list = field(default_factory=list)
    _order: itertools.count = field(default_factory=itertools.count)
    _timer_at: dict[str, float] = field(default_factory=dict)
    crashed: set[str] = field(default_factory=set)
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    dropped: int = 0
    forwarders: dict[str, Forwarder] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    frame_drops: Counter = field(default_factory=Counter)
    _app_timer_at: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, config: RoutingConfig, links: dict[str, SimLink], *, start: float = 0.0,
              stagger: float = 0.0) -> NetSim:
        sim = cls(config, links, now=start)
        names = sorted({n for link in links.values() for n in (link.a, link.b)})
        for i, name in enumerate(names):
            sim.start_router(name, start + i * stagger)
        return sim

    def start_router(self, name: str, at: float) -> None:
        """(Re)start ``name`` with a fresh core at ``at`` (a restart loses all its state)."""
        self.crashed.discard(name)
        self._push(at, "start", name)

    def stop_router(self, name: str) -> None:
        """Crash: the router vanishes; messages to it are lost."""
        self.routers.pop(name, None)
        self.forwarders.pop(name, None)
        self.crashed.add(name)
        self._timer_at.pop(name, None)

    def _push(self, at: float, kind: str, *args) -> None:
        heapq.heappush(self._queue, (at, next(self._order), kind, args))

    def _mine(self, name: str) -> dict[str, LinkConfig]:
        return {ln: LinkConfig(link.length_km, link.loss_db) for ln, link in self.links.items()
                if name in (link.a, link.b)}

    def _transmit(self, name: str, link_name: str, message) -> None:
        link = self.links[link_name]
        if link.cut:
            return
        if link.drop and self.rng.random() < link.drop:
            self.dropped += 1
            return
        peer = link.b if name == link.a else link.a
        self.messages += 1
        self._push(self.now + link.delay, "deliver", peer, link_name, encode(message))

    def _route_frame(self, name: str, decision, frame: RoutedFrame) -> None:
        if isinstance(decision, Forward):
            self._transmit(name, decision.link, frame)
        elif isinstance(decision, Deliver) and name in self.endpoints:
            self.endpoints[name].on_frame(frame, self.now)
        elif isinstance(decision, Drop):
            self.frame_drops[decision.reason] += 1

    def _service(self, name: str) -> None:
        """Let the endpoint at ``name`` send, and arm its timer."""
        endpoint = self.endpoints.get(name)
        if endpoint is None or name not in self.routers:
            return
        for dst, proto, payload in endpoint.poll(self.now):
            self._route_frame(name, *self.forwarders[name].originate(dst, proto, payload))
        at = endpoint.next_deadline()
        if at is not None:
            at = max(at, self.now)
            if self._app_timer_at.get(name) != at:
                self._app_timer_at[name] = at
                self._push(at, "app_timer", name)

    def _apply(self, name: str, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._transmit(name, action.link, action.message)
            elif isinstance(action, RoutesChanged | NeighbourUp | NeighbourDown):
                self.log.append((self.now, name, action))
                if isinstance(action, RoutesChanged) and name in self.forwarders:
                    self.forwarders[name].set_routes(action.routes)
                    if name in self.endpoints:
                        self.endpoints[name].on_routes(dict(action.routes), self.now)
        router = self.routers.get(name)
        if router is not None:
            at = max(router.next_deadline(), self.now)
            if self._timer_at.get(name) != at:
                self._timer_at[name] = at
                self._push(at, "timer", name)

    def run_until(self, t_end: float, max_events: int = 2_000_000) -> None:
        for _ in range(max_events):
            if not self._queue or self._queue[0][0] > t_end:
                self.now = t_end
                return
            at, _, kind, args = heapq.heappop(self._queue)
            self.now = max(self.now, at)
            name = args[0]
            if kind == "start":
                self.routers[name] = LinkStateRouter(name, self._mine(name), self.config, self.now)
                self.forwarders[name] = Forwarder(name)
                self._timer_at.pop(name, None)
                self._apply(name, self.routers[name].handle_timer(self.now))
                self._service(name)
                continue
            router = self.routers.get(name)
            if router is None:
                continue
            if kind == "timer":
                if self._timer_at.get(name) != at:
                    continue  # superseded by a later arming
                self._apply(name, router.handle_timer(self.now))
            elif kind == "app_timer":
                if self._app_timer_at.get(name) != at:
                    continue
                self._app_timer_at.pop(name)
            else:
                _, link, data = args
                message = decode(data)
                if isinstance(message, RoutedFrame):
                    self._route_frame(name, *self.forwarders[name].handle(message, link))
                else:
                    self._apply(name, router.receive(link, message, self.now))
            self._service(name)
        raise AssertionError(f"more than {max_events} events before t={t_end}")

    def cut(self, link: str, *, notify: bool = False) -> None:
        """Cut ``link`` both ways; ``notify`` also tells both ends' shells (carrier loss)."""
        self.links[link].cut = True
        if notify:
            for end in (self.links[link].a, self.links[link].b):
                if end in self.routers:
                    self._apply(end, self.routers[end].link_down(link, self.now))

    def restore(self, link: str) -> None:
        self.links[link].cut = False
        for end in (self.links[link].a, self.links[link].b):
            if end in self.routers and not self.routers[end].links[link].up:
                self._apply(end, self.routers[end].link_up(link, self.now))

    def converged(self) -> bool:
        """Every live router's routes equal those computed from the true live topology."""
        names = {n for link in self.links.values() for n in (link.a, link.b)} - self.crashed
        if set(self.routers) != names:
            return False
        return all(r.routes == self.expected_routes(n) for n, r in self.routers.items())

    def expected_routes(self, root: str) -> dict:
        """Routes from an oracle LSDB built from the links that are up between live routers."""
        from nodes.net.linkstate import shortest_paths
        from nodes.net.messages import LinkAdvert, Lsa

        adverts: dict[str, list] = {n: [] for n in self.routers}
        for ln, link in sorted(self.links.items()):
            if link.cut or link.a not in self.routers or link.b not in self.routers:
                continue
            for x, y in ((link.a, link.b), (link.b, link.a)):
                rtt = self.routers[x].links[ln].advertised_rtt_ms  # what x chose to advertise
                adverts[x].append(LinkAdvert(y, ln, link.length_km, link.loss_db, rtt))
        lsdb = {n: Lsa(n, 1, 0.0, tuple(a)) for n, a in adverts.items()}
        return shortest_paths(root, lsdb, self.config.metric)

    def run_until_down(self, since: float, t_limit: float, step: float = 0.001) -> float:
        """Advance in ``step``s until some router reports a neighbour down after ``since``;
        returns the earliest such report's time (or fails at ``t_limit``)."""
        while self.now < t_limit:
            self.run_until(self.now + step)
            times = [t for t, _, a in self.log if isinstance(a, NeighbourDown) and t >= since]
            if times:
                return min(times)
        raise AssertionError(f"no neighbour down by t={t_limit}")

    def run_until_converged(self, t_limit: float, step: float = 0.01) -> float:
        """Advance in ``step``s until converged (returns the time) or fail at ``t_limit``."""
        while self.now < t_limit:
            self.run_until(self.now + step)
            if self.converged():
                return self.now
        raise AssertionError(f"not converged by t={t_limit}")


def line(n: int, delay: float = 0.005) -> dict[str, SimLink]:
    return {f"l{i}": SimLink(f"r{i:02d}", f"r{i + 1:02d}", delay) for i in range(n - 1)}


def ring(n: int, delay: float = 0.005) -> dict[str, SimLink]:
    links = line(n, delay)
    links[f"l{n - 1}"] = SimLink(f"r{n - 1:02d}", "r00", delay)
    return links


def mesh(side: int, delay: float = 0.002, seed: int = 7) -> dict[str, SimLink]:
    """A side x side grid with a few diagonals; lengths vary so shortest paths are unique-ish."""
    rng = random.Random(seed)
    links: dict[str, SimLink] = {}

    def add(a: tuple[int, int], b: tuple[int, int]) -> None:
        na, nb = f"r{a[0] * side + a[1]:02d}", f"r{b[0] * side + b[1]:02d}"
        links[f"{na}-{nb}"] = SimLink(na, nb, delay * rng.uniform(0.5, 1.5),
                                      length_km=rng.choice([1.0, 2.0, 3.0, 5.0]))

    for i in range(side):
        for j in range(side):
            if j + 1 < side:
                add((i, j), (i, j + 1))
            if i + 1 < side:
                add((i, j), (i + 1, j))
            if i + 1 < side and j + 1 < side and rng.random() < 0.3:
                add((i, j), (i + 1, j + 1))
    return links
