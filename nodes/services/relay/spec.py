"""``[[apps]] kind = "kms.relay"``: end-to-end keys between ``a`` and ``b`` over QKD links.

The path is static until a routing shell exists (docs/decisions.md): given, or the fewest
hops over links that run a QKD app, resolved here when the scenario is validated and handed
to the nodes on it. The merge checks the relay's own accounting: on every link, the link-key
bits each end spent equal the relayed key bits that crossed it.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated, Any

from msgspec import Meta, Struct

from emulator.results import fmt, print_rows
from emulator.scenario import Name, Scenario, ScenarioError


class RelayApp(Struct, tag="kms.relay", tag_field="kind", forbid_unknown_fields=True):
    """Keys from ``a`` (the origin) to ``b`` through trusted relays (``path``: the nodes in
    between, in order; empty = fewest hops over QKD links). ``window`` keys are in flight at
    once; ``max_keys`` stops the origin after that many (default: as many as link keys allow).
    After the run's end the relay goes on while QKD blocks still arrive (post-processing lags
    the sources): the origin stops once no key arrived and no relay frame came for ``quiet_s``
    (at most ``after_end_s`` after the end), lets the keys in flight land and tells the path
    it is done. Timeouts are wall seconds."""

    a: Name
    b: Name
    path: list[Name] = []
    window: Annotated[int, Meta(ge=1, le=256)] = 8
    max_keys: Annotated[int, Meta(ge=1)] | None = None
    claim_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 10.0
    hold_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 10.0
    quiet_s: Annotated[float, Meta(gt=0, le=600)] = 3.0  # see below
    after_end_s: Annotated[float, Meta(ge=0, le=3600)] = 30.0
    name: Name | None = None

    @property
    def full_path(self) -> list[str]:
        return [self.a, *self.path, self.b]

    @property
    def label(self) -> str:
        return self.name or f"{self.a}-{self.b}"


def qkd_pairs(sc: Scenario) -> set[frozenset[str]]:
    """Node pairs that a QKD app makes link keys for."""
    return {frozenset((app.a, app.b)) for app in sc.apps
            if type(app).__struct_config__.tag.startswith("qkd.")}


def qkd_path(sc: Scenario, a: str, b: str) -> list[str] | None:
    """Fewest-hop path a..b over QKD-keyed links (BFS, neighbours in file order)."""
    pairs = qkd_pairs(sc)
    adjacency: dict[str, list[str]] = {n.name: [] for n in sc.nodes}
    for link in sc.links:
        if frozenset((link.a, link.b)) in pairs:
            adjacency[link.a].append(link.b)
            adjacency[link.b].append(link.a)
    previous: dict[str, str | None] = {a: None}
    frontier = [a]
    while frontier and b not in previous:
        frontier = [v for u in frontier for v in adjacency[u]
                    if v not in previous and previous.setdefault(v, u) == u]
    if b not in previous:
        return None
    out = [b]
    while out[-1] != a:
        out.append(previous[out[-1]])  # type: ignore[arg-type]
    return out[::-1]


def nodes(app: RelayApp) -> list[str]:
    return app.full_path


def validate(sc: Scenario, i: int, app: RelayApp) -> None:
    """The key service must run; resolve ``path``; every hop a link with a QKD app."""
    if app.a == app.b:
        raise ScenarioError(f"apps[{i}].b: the two ends must differ")
    if not sc.saes():
        raise ScenarioError(f"apps[{i}]: kms.relay stores keys in the nodes' key managers; "
                            "declare at least one SAE ([[nodes.sae]]) so they run")
    full = app.full_path if app.path else qkd_path(sc, app.a, app.b)
    if full is None:
        raise ScenarioError(f"apps[{i}].path: no path of QKD links from {app.a!r} to "
                            f"{app.b!r}")
    if len(set(full)) != len(full):
        raise ScenarioError(f"apps[{i}].path: a node appears twice")
    pairs = qkd_pairs(sc)
    for k, (u, v) in enumerate(pairwise(full)):
        if sc.link_between(u, v) is None or frozenset((u, v)) not in pairs:
            raise ScenarioError(f"apps[{i}].path[{k}]: no QKD link between {u!r} and {v!r}")
    app.path = full[1:-1]


def merge(scenario: Any, app: RelayApp, entries: list[dict]) -> list[dict]:
    """One entry per relay: keys delivered, and per node and per link the link-key bits
    spent (``consumption_ok``: each link's two ends spent ``relayed_bits`` of that link)."""
    by_node = {e["node"]: e for e in entries}
    path = app.full_path
    origin, target = by_node.get(app.a, {}), by_node.get(app.b, {})
    links = []
    for u, v in pairwise(path):
        link = scenario.link_between(u, v)
        spent_u = by_node.get(u, {}).get("consumed_bits", {}).get(v)
        spent_v = by_node.get(v, {}).get("consumed_bits", {}).get(u)
        links.append({"link": link.id if link else f"{u}-{v}", "a": u, "b": v,
                      "bits_consumed_a": spent_u, "bits_consumed_b": spent_v})
    key_bits = origin.get("key_bits")
    steps = [by_node.get(u, {}).get("steps_sent") for u in path[:-1]]
    # every forward over a link spent one link key at each end: bits = steps x key size
    ok = bool(key_bits) and all(s is not None for s in steps) and all(
        link["bits_consumed_a"] == link["bits_consumed_b"] == s * key_bits
        for link, s in zip(links, steps))
    return [{"name": app.label, "a": app.a, "b": app.b, "path": path, "hops": len(path) - 1,
             "key_bits": key_bits, "keys_originated": origin.get("originated", 0),
             "keys_delivered": origin.get("delivered", 0), "keys_stored": target.get("stored", 0),
             "relayed_bits": (origin.get("delivered", 0) * key_bits) if key_bits else 0,
             "links": links, "consumption_ok": ok,
             "relays": [{"node": u, "bits_consumed": by_node.get(u, {}).get("bits_consumed"),
                         "forwarded": by_node.get(u, {}).get("forwarded", 0),
                         "failures": by_node.get(u, {}).get("failures", {})}
                        for u in path[1:-1]],
             "failures": {u: by_node[u].get("failures", {}) for u in path if u in by_node},
             "reported": sorted(by_node)}]


def print_summary(console: Any, entry: dict) -> None:
    rows = [("hops", "hops", "d"), ("keys delivered", "keys_delivered", ",d"),
            ("relayed bits", "relayed_bits", ",d"), ("consumption ok", "consumption_ok", "")]
    print_rows(console, f"trusted relay {entry['name']} ({' > '.join(entry['path'])})", entry,
               rows)
    for relay in entry["relays"]:
        console.print(f"  relay {relay['node']}: {fmt(relay['bits_consumed'], ',d')} link-key "
                      f"bits spent, {relay['forwarded']} keys forwarded")
