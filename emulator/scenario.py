"""Scenario files: TOML validated into typed structs, with errors that name the field path.

A scenario is pure data (nodes, links, apps, faults, expectations). ``load_scenario`` reads
a file, applies ``--set`` overrides by dotted path, converts with msgspec (types, unknown keys,
ranges) and then checks cross-references (unknown nodes, duplicates). Every problem raises
``ScenarioError`` whose message starts with the path, e.g. ``links[0].length_km: ...``.
"""

from __future__ import annotations

import math
import re
import tomllib
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from emulator.physics.channels import FIBRE_GROUP_DELAY_S_PER_KM

NonNegative = Annotated[float, Meta(ge=0)]
Positive = Annotated[float, Meta(gt=0)]
Probability = Annotated[float, Meta(ge=0, le=1)]
Name = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class ScenarioError(Exception):
    """The scenario is invalid; the message starts with the offending field path."""


class Meta_(Struct, forbid_unknown_fields=True):
    name: Name
    description: str = ""
    duration_s: Positive = 10.0
    seed: int = 1
    time_scale: Positive = 1.0


class Node(Struct, forbid_unknown_fields=True):
    name: Name
    memory: NodeMemory | None = None  # quantum memory (entanglement apps); see below


class ClassicalLink(Struct, forbid_unknown_fields=True):
    """Per-direction behaviour of the relay; ``delay_ms`` defaults to the fibre delay."""

    protocol: Literal["tcp", "udp"] = "tcp"
    delay_ms: NonNegative | None = None
    jitter_ms: NonNegative = 0.0
    loss: Probability = 0.0
    rate_mbps: Positive | None = 1000.0


class Source(Struct, forbid_unknown_fields=True):
    """Weak coherent pulse source at the link's ``a`` end."""

    kind: Literal["wcp"] = "wcp"
    rate_hz: Annotated[float, Meta(gt=0, le=1e10)] = 1e8
    mu: NonNegative = 0.5
    decoys: list[NonNegative] = msgspec.field(default_factory=lambda: [0.1, 0.0])  # nu, vacuum
    probabilities: list[Probability] | None = None  # of [mu, *decoys]; default 0.8 / rest even

    @property
    def intensities(self) -> list[float]:
        return [self.mu, *self.decoys]

    @property
    def intensity_probabilities(self) -> list[float]:
        if self.probabilities is not None:
            return list(self.probabilities)
        if not self.decoys:
            return [1.0]
        return [0.8] + [0.2 / len(self.decoys)] * len(self.decoys)


class Detector(Struct, forbid_unknown_fields=True):
    """Pair of threshold detectors at the link's ``b`` end (passive basis choice)."""

    efficiency: Probability = 0.1
    dark_count_probability: Probability = 1e-6
    misalignment: Probability = 0.015


class QuantumLink(Struct, forbid_unknown_fields=True):
    attenuation_db_per_km: NonNegative = 0.2
    frame_ms: Annotated[float, Meta(gt=0, le=1000)] = 10.0
    source: Source = msgspec.field(default_factory=Source)
    detector: Detector = msgspec.field(default_factory=Detector)


class Link(Struct, forbid_unknown_fields=True):
    a: Name
    b: Name
    length_km: NonNegative
    name: Name | None = None
    classical: ClassicalLink = msgspec.field(default_factory=ClassicalLink)
    quantum: QuantumLink | None = None
    entanglement: LinkEntanglement | None = None  # heralded pair generation; see below

    @property
    def id(self) -> str:
        return self.name or f"{self.a}-{self.b}"

    @property
    def classical_delay_s(self) -> float:
        """One-way classical delay: configured, else the fibre's group delay."""
        if self.classical.delay_ms is not None:
            return self.classical.delay_ms / 1000.0
        return self.length_km * FIBRE_GROUP_DELAY_S_PER_KM


class BB84App(Struct, tag="qkd.bb84", tag_field="kind", forbid_unknown_fields=True):
    """Prepare-and-measure BB84 from ``a`` (sender) to ``b`` (receiver)."""

    a: Name
    b: Name
    link: Name | None = None
    sample_fraction: Annotated[float, Meta(gt=0, lt=1)] = 0.1
    sift_interval_s: Annotated[float, Meta(gt=0)] = 0.5
    postprocessing: bool = True  # needs decoys = [nu, 0.0]; False stops after sifting
    block_bits: Annotated[int, Meta(ge=1000)] = 100_000
    min_block_bits: Annotated[int, Meta(ge=1000)] = 10_000
    cascade: Literal["original", "yanetal", "option7", "option8"] = "yanetal"
    qber_abort: Annotated[float, Meta(gt=0, le=0.5)] = 0.11
    eps_pa: Annotated[float, Meta(gt=0, lt=1)] = 1e-10
    psk: Annotated[str, Meta(min_length=16)] = "qnet pre-shared authentication secret"
    finite_key: bool = False  # Lim et al. 2014 bounds: key from Z basis, X basis tests
    eps_sec: Annotated[float, Meta(gt=0, lt=1)] = 1e-10
    eps_cor: Annotated[float, Meta(gt=0, lt=1)] = 1e-15


# ---------------------------------------------------------------------------------------------
# Entanglement layer (issue 4): node memories, heralded links, and the apps that use them.
# Documented in docs/scenarios.md, section "Entanglement".


class NodeMemory(Struct, forbid_unknown_fields=True):
    """``[nodes.memory]``: ``slots`` qubits with T1/T2 in emulated seconds (omitted = no decay)
    and an optional cutoff (a qubit stored longer is discarded with its partners)."""

    slots: Annotated[int, Meta(ge=1, le=100_000)] = 16
    t1_s: Positive | None = None
    t2_s: Positive | None = None
    cutoff_s: Positive | None = None


class LinkEntanglement(Struct, forbid_unknown_fields=True):
    """``[links.entanglement]``: heralded pairs from a midpoint station (Barrett-Kok style
    linear-optics BSM, efficiency ``bsm_efficiency``); each photon crosses half the fibre."""

    attempt_rate_hz: Annotated[float, Meta(gt=0, le=1e9)] = 1e5
    source_fidelity: Annotated[float, Meta(ge=0.25, le=1)] = 0.99
    detector_efficiency: Probability = 0.9
    attenuation_db_per_km: NonNegative = 0.2
    bsm_efficiency: Probability = 0.5


Purification = Literal["none", "bbpssw", "dejmps"]


class PairsApp(Struct, tag="entanglement.pairs", tag_field="kind", forbid_unknown_fields=True):
    """End-to-end pairs between ``a`` and ``b`` over ``path`` (repeaters in order; empty =
    shortest path over entanglement links), swapped at the repeaters, optionally purified,
    then measured in random Pauli bases to estimate the fidelity."""

    a: Name
    b: Name
    path: list[Name] = []
    count: Annotated[int, Meta(ge=1, le=10_000_000)] = 1000
    target_fidelity: Annotated[float, Meta(ge=0, le=1)] = 0.0
    purification: Purification = "none"
    purification_rounds: Annotated[int, Meta(ge=0, le=8)] = 0
    name: Name | None = None


class RepeaterApp(Struct, tag="entanglement.repeater", tag_field="kind",
                  forbid_unknown_fields=True):
    """Swapping role of node ``a`` (= ``b``) for ``apps[app]``. Added by the validator for every
    repeater on an ``entanglement.pairs`` path; not written by hand."""

    a: Name
    b: Name
    app: int


class TeleportApp(Struct, tag="teleport", tag_field="kind", forbid_unknown_fields=True):
    """Teleport ``count`` states from ``a`` to ``b`` over a direct entanglement link; ``state``
    is ``random`` (uniform on the Bloch sphere) or one of ``0 1 + - r l``."""

    a: Name
    b: Name
    count: Annotated[int, Meta(ge=1, le=1_000_000)] = 200
    state: Literal["random", "0", "1", "+", "-", "r", "l"] = "random"


class BBM92App(Struct, tag="qkd.bbm92", tag_field="kind", forbid_unknown_fields=True):
    """Entanglement-based QKD between ``a`` and ``b`` on a direct entanglement link: Z/X
    measurements for the key, CHSH settings on a fraction of the pairs, then the QKD
    post-processing (Cascade, verification, privacy amplification, authentication) with the
    BBM92 length n [1 - h(e)] - leak - verification - 2 log2(1/eps_pa) per block."""

    a: Name
    b: Name
    count: Annotated[int, Meta(ge=100, le=100_000_000)] = 20_000
    chsh_fraction: Annotated[float, Meta(gt=0, lt=1)] = 0.2
    sample_fraction: Annotated[float, Meta(gt=0, lt=1)] = 0.1
    link: Name | None = None
    sift_interval_s: Annotated[float, Meta(gt=0)] = 0.5  # wall seconds between batches
    block_bits: Annotated[int, Meta(ge=1000)] = 60_000
    min_block_bits: Annotated[int, Meta(ge=1000)] = 20_000
    cascade: Literal["original", "yanetal", "option7", "option8"] = "original"
    qber_abort: Annotated[float, Meta(gt=0, le=0.5)] = 0.11
    eps_pa: Annotated[float, Meta(gt=0, lt=1)] = 1e-10
    psk: Annotated[str, Meta(min_length=16)] = "qnet pre-shared authentication secret"


class ExternalApp(Struct, tag="external", tag_field="kind", forbid_unknown_fields=True):
    """A program run as its own process at ``a`` and at ``b``, driving its node through the
    local app socket (nodes/app_socket.py); ``python`` as ``command[0]`` is this Python."""

    a: Name
    b: Name
    command: Annotated[list[str], Meta(min_length=1)]


def entanglement_neighbours(sc: Scenario) -> dict[str, list[str]]:
    """Adjacency over links that have an ``[links.entanglement]`` part."""
    adj: dict[str, list[str]] = {n.name: [] for n in sc.nodes}
    for link in sc.links:
        if link.entanglement is not None:
            adj[link.a].append(link.b)
            adj[link.b].append(link.a)
    return adj


def shortest_path(sc: Scenario, a: str, b: str) -> list[str] | None:
    """Fewest-hop path a..b (inclusive) over entanglement links (BFS, neighbours in file order)."""
    adj = entanglement_neighbours(sc)
    previous: dict[str, str | None] = {a: None}
    frontier = [a]
    while frontier and b not in previous:
        nxt = []
        for u in frontier:
            for v in adj[u]:
                if v not in previous:
                    previous[v] = u
                    nxt.append(v)
        frontier = nxt
    if b not in previous:
        return None
    out = [b]
    while out[-1] != a:
        out.append(previous[out[-1]])  # type: ignore[arg-type]
    return out[::-1]


def memory_of(sc: Scenario, node: str) -> NodeMemory:
    """The node's memory config (defaults when the scenario gives none)."""
    for n in sc.nodes:
        if n.name == node:
            return n.memory or NodeMemory()
    raise KeyError(node)


def _check_entanglement_app(sc: Scenario, i: int, app) -> list[RepeaterApp]:
    """Validate one entanglement app; resolve ``path``; return the repeater roles it needs."""
    if app.a == app.b:
        raise ScenarioError(f"apps[{i}].b: the two ends must differ")
    if isinstance(app, PairsApp):
        if (app.purification == "none") != (app.purification_rounds == 0):
            raise ScenarioError(f"apps[{i}].purification_rounds: give rounds > 0 exactly "
                                f"when purification is not 'none'")
        full = [app.a, *app.path, app.b] if app.path else shortest_path(sc, app.a, app.b)
        if full is None:
            raise ScenarioError(f"apps[{i}].path: no path of entanglement links from "
                                f"{app.a!r} to {app.b!r}")
        if len(set(full)) != len(full):
            raise ScenarioError(f"apps[{i}].path: a node appears twice")
        for k, (u, v) in enumerate(pairwise(full)):
            link = sc.link_between(u, v)
            if link is None or link.entanglement is None:
                raise ScenarioError(f"apps[{i}].path[{k}]: no entanglement link between "
                                    f"{u!r} and {v!r}")
        app.path = full[1:-1]
        return [RepeaterApp(a=r, b=r, app=i) for r in app.path]
    link = sc.link(app.link) if getattr(app, "link", None) else sc.link_between(app.a, app.b)
    if link is None or link.entanglement is None:
        raise ScenarioError(f"apps[{i}].b: no direct entanglement link between {app.a!r} and "
                            f"{app.b!r}")
    return []


def _expand_repeaters(sc: Scenario) -> None:
    """Check entanglement apps and add one ``RepeaterApp`` per repeater (idempotent)."""
    wanted: list[RepeaterApp] = []
    for i, app in enumerate(sc.apps):
        if isinstance(app, (PairsApp, TeleportApp, BBM92App)):
            wanted.extend(_check_entanglement_app(sc, i, app))
        elif isinstance(app, RepeaterApp):
            target = sc.apps[app.app] if 0 <= app.app < len(sc.apps) else None
            if not isinstance(target, PairsApp):
                raise ScenarioError(f"apps[{i}].app: not the index of an entanglement.pairs app")
    have = {(r.a, r.app) for r in sc.apps if isinstance(r, RepeaterApp)}
    sc.apps.extend(r for r in wanted if (r.a, r.app) not in have)


App = BB84App | PairsApp | RepeaterApp | TeleportApp | BBM92App | ExternalApp


def app_kind(app: App) -> str:
    """The ``kind`` string an app was declared with (its msgspec tag)."""
    return type(app).__struct_config__.tag


class Fault(Struct, forbid_unknown_fields=True):
    at_s: NonNegative
    action: Literal["cut", "restore", "corrupt"]  # corrupt: flip a bit in a bulk TCP chunk
    link: Name
    for_s: Positive | None = None


class Expect(Struct, forbid_unknown_fields=True):
    metric: Annotated[str, Meta(min_length=1)]
    lt: float | None = None
    le: float | None = None
    gt: float | None = None
    ge: float | None = None

    def holds(self, value: float | None) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        checks = [
            (self.lt, lambda x, b: x < b),
            (self.le, lambda x, b: x <= b),
            (self.gt, lambda x, b: x > b),
            (self.ge, lambda x, b: x >= b),
        ]
        return all(op(value, bound) for bound, op in checks if bound is not None)

    def describe(self) -> str:
        parts = [f"{op} {b:g}" for op, b in
                 (("<", self.lt), ("<=", self.le), (">", self.gt), (">=", self.ge))
                 if b is not None]
        return " and ".join(parts)


class Scenario(Struct, forbid_unknown_fields=True):
    scenario: Meta_
    nodes: list[Node]
    links: list[Link] = []
    apps: list[App] = []
    faults: list[Fault] = []
    expect: list[Expect] = []

    def link(self, name: str) -> Link:
        for link in self.links:
            if link.id == name:
                return link
        raise KeyError(name)

    def link_between(self, a: str, b: str) -> Link | None:
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        return None


_PATH = re.compile(r"`\$((?:\.[^.`\[]+|\[\d+\])*)`")


def _msgspec_error(exc: msgspec.ValidationError) -> ScenarioError:
    """Turn msgspec's "... - at `$.links[0].a`" into "links[0].a: ..."."""
    text = str(exc)
    match = _PATH.search(text)
    if not match:
        return ScenarioError(f"(top level): {text}")
    path = match.group(1).lstrip(".")
    problem = text[: text.rfind(" - at ")] if " - at " in text else text
    if "Object contains unknown field" in problem:
        field = problem.split("`")[1]
        return ScenarioError(f"{path + '.' if path else ''}{field}: unknown key")
    return ScenarioError(f"{path or '(top level)'}: {problem}")


def _parse_value(text: str) -> Any:
    """A ``--set`` value is read as a TOML value; bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict, assignment: str) -> None:
    """Apply ``dotted.path=value`` to the raw scenario dict (list indices as numbers)."""
    if "=" not in assignment:
        raise ScenarioError(f"--set {assignment}: expected PATH=VALUE")
    path, value = assignment.split("=", 1)
    keys = path.strip().split(".")
    target: Any = raw
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[: depth + 1])
        if isinstance(target, list):
            if not key.isdigit() or int(key) >= len(target):
                raise ScenarioError(f"{where}: no list element {key!r}")
            if last:
                target[int(key)] = _parse_value(value)
            else:
                target = target[int(key)]
        elif isinstance(target, dict):
            if last:
                target[key] = _parse_value(value)
            else:
                target = target.setdefault(key, {})
        else:
            raise ScenarioError(f"{where}: cannot descend into a {type(target).__name__}")


def _check_references(sc: Scenario) -> None:
    names: set[str] = set()
    for i, node in enumerate(sc.nodes):
        if node.name in names:
            raise ScenarioError(f"nodes[{i}].name: duplicate node {node.name!r}")
        names.add(node.name)
    if not sc.nodes:
        raise ScenarioError("nodes: at least one node is required")
    link_ids: set[str] = set()
    for i, link in enumerate(sc.links):
        for end in ("a", "b"):
            if getattr(link, end) not in names:
                raise ScenarioError(f"links[{i}].{end}: unknown node {getattr(link, end)!r}")
        if link.a == link.b:
            raise ScenarioError(f"links[{i}].b: a link needs two different nodes")
        if link.id in link_ids:
            raise ScenarioError(f"links[{i}].name: duplicate link {link.id!r}")
        link_ids.add(link.id)
    for i, app in enumerate(sc.apps):
        for end in ("a", "b"):
            if getattr(app, end) not in names:
                raise ScenarioError(f"apps[{i}].{end}: unknown node {getattr(app, end)!r}")
        if isinstance(app, BB84App):
            link = sc.link(app.link) if app.link in link_ids else (
                None if app.link else sc.link_between(app.a, app.b))
            if link is None:
                raise ScenarioError(f"apps[{i}].link: no link between {app.a!r} and {app.b!r}")
            if link.quantum is None:
                raise ScenarioError(f"apps[{i}].link: link {link.id!r} has no [quantum] part")
            source = link.quantum.source
            if source.probabilities is not None and (
                    len(source.probabilities) != len(source.intensities)
                    or abs(sum(source.probabilities) - 1) > 1e-9):
                raise ScenarioError(
                    f"links[{sc.links.index(link)}].quantum.source.probabilities: need one per "
                    f"intensity ({len(source.intensities)}) summing to 1")
            if app.postprocessing and not (
                    len(source.decoys) == 2 and source.mu > source.decoys[0] > 0
                    and source.decoys[1] == 0):
                raise ScenarioError(
                    f"apps[{i}].postprocessing: decoy-state estimation needs "
                    f"links[{sc.links.index(link)}].quantum.source.decoys = [nu, 0.0] with "
                    f"0 < nu < mu (or set postprocessing = false)")
            if (link.a, link.b) != (app.a, app.b):
                raise ScenarioError(
                    f"apps[{i}].a: the sender must be the link's 'a' end ({link.a!r}), "
                    f"where its source is")
    _expand_repeaters(sc)
    for i, fault in enumerate(sc.faults):
        if fault.link not in link_ids:
            raise ScenarioError(f"faults[{i}].link: unknown link {fault.link!r}")


def bb84_link(sc: Scenario, app: BB84App) -> Link:
    return sc.link(app.link) if app.link else sc.link_between(app.a, app.b)  # type: ignore[return-value]


def parse_scenario(raw: dict, overrides: list[str] = ()) -> Scenario:
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        sc = msgspec.convert(raw, Scenario)
    except msgspec.ValidationError as exc:
        raise _msgspec_error(exc) from None
    _check_references(sc)
    return sc


def read_raw(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such file") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML ({exc})") from None


def load_scenario(path: str | Path, overrides: list[str] = ()) -> Scenario:
    return parse_scenario(read_raw(path), overrides)


def to_builtins(sc: Scenario) -> dict:
    return msgspec.to_builtins(sc)
