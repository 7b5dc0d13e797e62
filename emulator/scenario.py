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
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

FIBRE_GROUP_DELAY_S_PER_KM = 4.9e-6

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


App = BB84App


def app_kind(app: App) -> str:
    """The ``kind`` string an app was declared with (its msgspec tag)."""
    return type(app).__struct_config__.tag


class Fault(Struct, forbid_unknown_fields=True):
    at_s: NonNegative
    action: Literal["cut", "restore"]
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
            if (link.a, link.b) != (app.a, app.b):
                raise ScenarioError(
                    f"apps[{i}].a: the sender must be the link's 'a' end ({link.a!r}), "
                    f"where its source is")
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
