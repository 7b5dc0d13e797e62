"""Link-state routing core of one node (sans-I/O): hellos, reliable LSA flooding, ageing, SPF.

Events in (a hello or LSA received on a link, link up/down from the shell, an RTT sample, the
clock via ``handle_timer(now)``), actions out (``Send`` on a link, ``RoutesChanged``,
``NeighbourUp``/``NeighbourDown``). OSPF-like (RFC 2328) on point-to-point links, without areas
or a designated router. The shell arms one timer at ``next_deadline()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from nodes.net.messages import Hello, LinkAdvert, Lsa, LsaAck
from nodes.net.spf import Metric, Route, shortest_paths

__all__ = ["LinkConfig", "LinkStateRouter", "Metric", "NeighbourDown", "NeighbourUp", "Route",
           "RoutesChanged", "RoutingConfig", "Send", "shortest_paths"]


@dataclass(frozen=True)
class RoutingConfig:
    """Timers (seconds of the clock the shell passes as ``now``) and the metric."""

    hello_interval: float = 1.0
    dead_interval: float = 4.0
    retransmit_interval: float = 1.0
    refresh_interval: float = 60.0
    max_age: float = 180.0
    min_lsa_interval: float = 0.5  # after an origination, new adjacencies and RTTs wait this
    spf_hold: float = 0.02  # between route computations (a burst of LSAs costs one)
    rtt_change: float = 0.2  # relative change of the smoothed RTT that is re-advertised
    metric: Metric = field(default_factory=lambda: Metric(length_km=1.0))

    def __post_init__(self) -> None:
        if not 0 < self.hello_interval < self.dead_interval:
            raise ValueError("need 0 < hello_interval < dead_interval")
        if not 0 < self.refresh_interval < self.max_age:
            raise ValueError("need 0 < refresh_interval < max_age")
        if self.retransmit_interval <= 0 or min(self.min_lsa_interval, self.spf_hold,
                                                self.rtt_change) < 0:
            raise ValueError("retransmit_interval must be > 0; min_lsa_interval, spf_hold, "
                             "rtt_change >= 0")


@dataclass(frozen=True)
class LinkConfig:
    """The static metrics of one of our links, as advertised."""

    length_km: float = 0.0
    loss_db: float = 0.0


@dataclass(frozen=True)
class Send:
    link: str
    message: Hello | Lsa | LsaAck


@dataclass(frozen=True)
class RoutesChanged:
    routes: Mapping[str, Route]


@dataclass(frozen=True)
class NeighbourUp:
    link: str
    neighbour: str
    at: float


@dataclass(frozen=True)
class NeighbourDown:
    link: str
    neighbour: str
    reason: str  # dead | link_down | one_way | replaced
    at: float


Action = Send | RoutesChanged | NeighbourUp | NeighbourDown


@dataclass
class _Neighbour:
    name: str
    last_heard: float
    last_t: float
    two_way: bool = False
    pending: dict[str, tuple[int, float]] = field(default_factory=dict)  # origin -> (seq, due)


@dataclass
class _Link:
    config: LinkConfig
    up: bool = True
    next_hello: float = 0.0
    neighbour: _Neighbour | None = None
    srtt: float | None = None  # seconds
    advertised_rtt_ms: float | None = None


@dataclass
class _Entry:
    lsa: Lsa
    installed_at: float

    def age(self, now: float) -> float:
        return self.lsa.age + (now - self.installed_at)


class LinkStateRouter:
    """Routing state machine of router ``name`` with point-to-point ``links`` (name -> config)."""

    def __init__(self, name: str, links: Mapping[str, LinkConfig], config: RoutingConfig,
                 now: float, first_seq: int = 0) -> None:
        """``first_seq``: our first LSA gets ``first_seq + 1`` (a restarted router passes
        something larger than any seq it sent before, e.g. from the emulated time)."""
        self.name = name
        self.config = config
        self.links = {n: _Link(c, next_hello=now) for n, c in sorted(links.items())}
        self.lsdb: dict[str, _Entry] = {}
        self.routes: dict[str, Route] = {}
        self.counters: Counter[str] = Counter()
        self._seq = first_seq
        self._origination_due: float | None = None
        self._originated_at = now
        self._throttled_from = -float("inf")  # last origination that counts for the throttle
        self._spf_due: float | None = None
        self._spf_at = -float("inf")
        # Early-or-exact bounds on the next retransmission and the next LSA expiry (a stale
        # early one costs a wake-up that finds nothing due), so next_deadline is O(links).
        self._rxmt_at = float("inf")
        self._expiry_at = float("inf")
        self._install_own(now)

    # ---- inputs -------------------------------------------------------------------------

    def receive(self, link: str, message: Hello | Lsa | LsaAck, now: float) -> list[Action]:
        """A routing message that arrived on ``link``."""
        state = self.links.get(link)
        if state is None or not state.up:
            self.counters["dropped_unknown_link" if state is None else "dropped_link_down"] += 1
            return []
        if isinstance(message, Hello):
            return self._on_hello(link, state, message, now)
        nb = state.neighbour
        if nb is None:
            self.counters["dropped_not_adjacent"] += 1
            return []
        if isinstance(message, Lsa):
            return self._on_lsa(link, nb, message, now)
        pending = nb.pending.get(message.origin)
        if pending is not None and pending[0] == message.seq:
            del nb.pending[message.origin]
        return []

    def link_up(self, link: str, now: float) -> list[Action]:
        """The shell says ``link`` works again: greet at once."""
        state = self.links[link]
        state.up = True
        state.next_hello = now
        return self.handle_timer(now)

    def link_down(self, link: str, now: float) -> list[Action]:
        """The shell says ``link`` is down: drop its neighbour now, without waiting for dead."""
        state = self.links[link]
        state.up = False
        if state.neighbour is None:
            return []
        return self._lose(link, state, "link_down", now)

    def rtt_sample(self, link: str, rtt: float, now: float) -> list[Action]:
        """A measured round trip (seconds) on ``link``; re-advertised when it moved enough."""
        state = self.links[link]
        state.srtt = rtt if state.srtt is None else 0.875 * state.srtt + 0.125 * rtt
        if self.config.metric.rtt_ms == 0 or state.neighbour is None or not state.neighbour.two_way:
            return []
        old, new = state.advertised_rtt_ms, state.srtt * 1e3
        if old is not None and abs(new - old) <= self.config.rtt_change * old:
            return []
        return self._reoriginate(now)

    def handle_timer(self, now: float) -> list[Action]:
        """Everything due at ``now``: hellos, dead neighbours, retransmissions, refresh, ageing."""
        out: list[Action] = []
        cfg = self.config
        for name, state in self.links.items():
            nb = state.neighbour
            if nb is not None and now >= nb.last_heard + cfg.dead_interval:
                out += self._lose(name, state, "dead", now)
            if state.up and now >= state.next_hello:
                out.append(Send(name, self._hello(name, state, now)))
                state.next_hello = now + cfg.hello_interval
        if now >= self._rxmt_at:
            self._rxmt_at = float("inf")
            for name, state in self.links.items():
                if state.neighbour is not None:
                    out += self._retransmit(name, state.neighbour, now)
            self._rxmt_at = min((due for state in self.links.values() if state.neighbour
                                 for _, due in state.neighbour.pending.values()),
                                default=float("inf"))
        if now >= self._originated_at + cfg.refresh_interval or (
                self._origination_due is not None and now >= self._origination_due):
            out += self._originate(now)
        expired = []
        if now >= self._expiry_at:
            expired = [o for o, e in self.lsdb.items()
                       if o != self.name and e.age(now) >= cfg.max_age]
            for origin in expired:
                del self.lsdb[origin]
                self.counters["lsa_aged_out"] += 1
            self._expiry_at = min((e.installed_at + cfg.max_age - e.lsa.age
                                   for o, e in self.lsdb.items() if o != self.name),
                                  default=float("inf"))
        if expired or (self._spf_due is not None and now >= self._spf_due):
            out += self._spf(now)
        return out

    def next_deadline(self) -> float:
        """The earliest time at which ``handle_timer`` has something to do."""
        cfg = self.config
        times = [self._originated_at + cfg.refresh_interval, self._rxmt_at, self._expiry_at]
        if self._origination_due is not None:
            times.append(self._origination_due)
        if self._spf_due is not None:
            times.append(self._spf_due)
        for state in self.links.values():
            if state.up:
                times.append(state.next_hello)
            if state.neighbour is not None:
                times.append(state.neighbour.last_heard + cfg.dead_interval)
        return min(times)

    # ---- hellos and neighbours -----------------------------------------------------------

    def _hello(self, link: str, state: _Link, now: float) -> Hello:
        nb = state.neighbour
        cfg = self.config
        if nb is None:
            return Hello(self.name, link, cfg.hello_interval, cfg.dead_interval, now)
        return Hello(self.name, link, cfg.hello_interval, cfg.dead_interval, now, seen=nb.name,
                     echo=nb.last_t, held=max(0.0, now - nb.last_heard))

    def _on_hello(self, link: str, state: _Link, hello: Hello, now: float) -> list[Action]:
        cfg = self.config
        if hello.link != link or hello.router == self.name:
            self.counters["dropped_hello_link_mismatch"] += 1
            return []
        if (hello.hello_interval, hello.dead_interval) != (cfg.hello_interval, cfg.dead_interval):
            self.counters["dropped_hello_interval_mismatch"] += 1
            return []
        out: list[Action] = []
        nb = state.neighbour
        if nb is not None and nb.name != hello.router:
            out += self._lose(link, state, "replaced", now)
            nb = None
        if nb is None:
            nb = state.neighbour = _Neighbour(hello.router, now, hello.t)
        nb.last_heard, nb.last_t = now, hello.t
        sees_us = hello.seen == self.name
        if sees_us and hello.echo is not None and now - hello.echo - hello.held >= 0:
            out += self.rtt_sample(link, now - hello.echo - hello.held, now)
        if sees_us and not nb.two_way:
            nb.two_way = True
            out.append(NeighbourUp(link, nb.name, now))
            out.append(Send(link, self._hello(link, state, now)))
            for entry in self.lsdb.values():  # database sync: the new neighbour gets everything
                if entry.lsa.origin != self.name:
                    out.append(self._send_lsa(link, nb, entry, now))
            out += self._reoriginate(now)  # includes the new adjacency (and floods our LSA)
        elif not sees_us:
            if nb.two_way:
                out += self._lose(link, state, "one_way", now)
                state.neighbour = _Neighbour(hello.router, now, hello.t)
            out.append(Send(link, self._hello(link, state, now)))
        return out

    def _lose(self, link: str, state: _Link, reason: str, now: float) -> list[Action]:
        nb = state.neighbour
        assert nb is not None
        state.neighbour = None
        state.srtt = state.advertised_rtt_ms = None
        if not nb.two_way:
            return []
        return [NeighbourDown(link, nb.name, reason, now), *self._originate(now)]  # never held

    # ---- flooding ------------------------------------------------------------------------

    def _send_lsa(self, link: str, nb: _Neighbour, entry: _Entry, now: float) -> Send:
        due = now + self.config.retransmit_interval
        nb.pending[entry.lsa.origin] = (entry.lsa.seq, due)
        self._rxmt_at = min(self._rxmt_at, due)
        self.counters["lsa_sent"] += 1
        lsa = entry.lsa
        return Send(link, Lsa(lsa.origin, lsa.seq, min(entry.age(now), self.config.max_age),
                              lsa.links))

    def _flood(self, entry: _Entry, now: float, *, skip: str | None = None) -> list[Action]:
        return [self._send_lsa(name, state.neighbour, entry, now)
                for name, state in self.links.items()
                if name != skip and state.neighbour is not None and state.neighbour.two_way]

    def _retransmit(self, link: str, nb: _Neighbour, now: float) -> list[Action]:
        out: list[Action] = []
        for origin, (seq, due) in list(nb.pending.items()):
            if due > now:
                continue
            entry = self.lsdb.get(origin)
            if entry is None or entry.lsa.seq != seq:
                del nb.pending[origin]
                continue
            self.counters["lsa_retransmitted"] += 1
            out.append(self._send_lsa(link, nb, entry, now))
        return out

    def _on_lsa(self, link: str, nb: _Neighbour, lsa: Lsa, now: float) -> list[Action]:
        out: list[Action] = [Send(link, LsaAck(lsa.origin, lsa.seq))]
        pending = nb.pending.get(lsa.origin)
        if pending is not None and pending[0] <= lsa.seq:
            del nb.pending[lsa.origin]  # the neighbour has this instance or a newer one
        current = self.lsdb.get(lsa.origin)
        if lsa.origin == self.name:
            if lsa.seq > self._seq or (lsa.seq == self._seq and lsa.links != current.lsa.links):
                self.counters["lsa_own_outbid"] += 1  # an instance from before our restart
                self._seq = lsa.seq
                out += self._reoriginate(now)
            elif lsa.seq < self._seq:
                out.append(self._send_lsa(link, nb, current, now))
            return out  # (our current instance echoed back: nothing to do)
        if current is not None and lsa.seq < current.lsa.seq:
            out.append(self._send_lsa(link, nb, current, now))  # teach the sender the newer one
            return out
        if current is not None and lsa.seq == current.lsa.seq and lsa.age < self.config.max_age:
            return out
        if lsa.age >= self.config.max_age:  # a flush: forget this or an older instance
            self.counters["lsa_flushed"] += 1
            if current is None:
                return out
            del self.lsdb[lsa.origin]
            out += self._flood(_Entry(lsa, now), now, skip=link)
            return out + self._spf(now)
        entry = self.lsdb[lsa.origin] = _Entry(lsa, now)
        self._expiry_at = min(self._expiry_at, now + self.config.max_age - lsa.age)
        self.counters["lsa_installed"] += 1
        out += self._flood(entry, now, skip=link)
        return out + self._spf(now)

    def _install_own(self, now: float) -> _Entry:
        self._seq += 1
        adverts = []
        for name, state in self.links.items():
            nb = state.neighbour
            if nb is None or not nb.two_way:
                continue
            rtt = None if state.srtt is None else state.srtt * 1e3
            state.advertised_rtt_ms = rtt
            adverts.append(LinkAdvert(nb.name, name, state.config.length_km,
                                      state.config.loss_db, rtt))
        entry = self.lsdb[self.name] = _Entry(Lsa(self.name, self._seq, 0.0, tuple(adverts)), now)
        self._originated_at = now
        self._origination_due = None
        return entry

    def _originate(self, now: float) -> list[Action]:
        entry = self._install_own(now)
        self.counters["lsa_originated"] += 1
        self._throttled_from = now
        return self._flood(entry, now) + self._spf(now, hold=False)

    def _reoriginate(self, now: float) -> list[Action]:
        """Originate now, or at ``min_lsa_interval`` after the last one (changes coalesce)."""
        allowed = self._throttled_from + self.config.min_lsa_interval
        if now >= allowed:
            return self._originate(now)
        self._origination_due = allowed
        return []

    # ---- shortest paths ------------------------------------------------------------------

    def _spf(self, now: float, *, hold: bool = True) -> list[Action]:
        """Recompute routes; within ``spf_hold`` of the last run, later (unless our own LSA
        changed: a local change is never held)."""
        if hold and now < self._spf_at + self.config.spf_hold:
            self._spf_due = self._spf_at + self.config.spf_hold
            return []
        self._spf_at, self._spf_due = now, None
        self.counters["spf_runs"] += 1
        routes = shortest_paths(self.name, {o: e.lsa for o, e in self.lsdb.items()},
                                self.config.metric)
        if routes == self.routes:
            return []
        self.routes = routes
        return [RoutesChanged(dict(routes))]
