"""Scenario files: TOML validated into typed structs, with errors that name the field path.

A scenario is pure data (nodes, links, apps, faults, expectations). ``load_scenario`` reads
a file, applies ``--set`` overrides by dotted path, rejects non-finite numbers, converts with
msgspec (types, unknown keys, ranges), converts each ``[[apps]]`` table with the spec of its
registered kind (``emulator.apps``), then checks cross-references (unknown nodes, duplicates)
and runs each kind's own checks. Every problem raises ``ScenarioError`` whose message starts
with the path, e.g. ``links[0].length_km: ...``. Nothing here knows a particular app kind.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import msgspec
import numpy as np
from msgspec import Meta, Struct

from emulator.apps import PluginError, kind_of, kinds
from emulator.hybrid_config import LinkFlight, NodeHybrid
from emulator.physics import detector_effects, satellite, sources
from emulator.physics.channels import fibre_delay
from emulator.programs import NodeProgram, ProgramError, check_programs

NonNegative = Annotated[float, Meta(ge=0)]
Positive = Annotated[float, Meta(gt=0)]
Probability = Annotated[float, Meta(ge=0, le=1)]
Seed = Annotated[int, Meta(ge=0, le=2**63 - 1)]  # numpy SeedSequence words; PRF 64-bit keys
Name = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class ScenarioError(Exception):
    """The scenario is invalid; the message starts with the offending field path."""


class Meta_(Struct, forbid_unknown_fields=True):
    name: Name
    description: str = ""
    duration_s: Positive = 10.0
    seed: Seed = 1
    time_scale: Positive = 1.0


class Sae(Struct, forbid_unknown_fields=True):
    """A secure application entity that takes keys from its node's KME (ETSI GS QKD 014)."""

    id: Name


class Kms(Struct, forbid_unknown_fields=True):
    """The key service of every node (runs when any node declares an SAE); sizes in bits."""

    key_size: Annotated[int, Meta(ge=8, le=65536, multiple_of=8)] = 256
    max_key_count: Annotated[int, Meta(ge=1)] = 100_000
    max_key_per_request: Annotated[int, Meta(ge=1, le=10_000)] = 128
    min_key_size: Annotated[int, Meta(ge=8, multiple_of=8)] = 64


class Node(Struct, forbid_unknown_fields=True):
    name: Name
    memory: NodeMemory | None = None  # quantum memory (entanglement apps); see below
    clock: NodeClock | None = None  # its clock's frequency offset (clocks apps); see below
    run: list[NodeProgram] = []  # user programs started beside the node (emulator/programs.py)
    sae: list[Sae] = []  # SAEs attached to this node's KME (docs/kms.md)
    domain: Name | None = None  # its operator: whose CA certifies its KME and SAEs (docs/kms.md)
    hybrid: NodeHybrid | None = None  # delay line and drift compensation (hybrid packets)


class ClassicalLink(Struct, forbid_unknown_fields=True):
    """Per-direction behaviour of the relay; ``delay_ms`` defaults to the fibre delay."""

    protocol: Literal["tcp", "udp"] = "tcp"
    delay_ms: NonNegative | None = None
    jitter_ms: NonNegative = 0.0
    loss: Probability = 0.0
    rate_mbps: Positive | None = 1000.0
    mtu: Annotated[int, Meta(ge=1280, le=9000)] = 1500  # --netns: the wire's MTU (IPv6 >= 1280)
    subnet: str | None = None  # --netns: the wire's IPv4 subnet (default plan: docs/netns.md)


class Source(Struct, forbid_unknown_fields=True):
    """Source at the link's ``a`` end: weak coherent pulses (``wcp``), thermal light, heralded
    SPDC (``mu`` = mean pairs per pulse, one slot per herald) or a ``table`` of P(n) per
    intensity (``emulator.physics.sources``)."""

    kind: Literal["wcp", "thermal", "spdc", "table"] = "wcp"
    rate_hz: Annotated[float, Meta(gt=0, le=1e10)] = 1e8
    mu: NonNegative = 0.5
    decoys: list[NonNegative] = msgspec.field(default_factory=lambda: [0.1, 0.0])  # nu, vacuum
    probabilities: list[Probability] | None = None  # of [mu, *decoys]; default 0.8 / rest even
    herald_efficiency: Probability = 0.6  # spdc: efficiency of the herald detector
    herald_dark_count_probability: Probability = 1e-6  # spdc: per gate of the herald detector
    photon_numbers: list[list[Probability]] | None = None  # table: [P(0), P(1), ...] per intensity

    def __post_init__(self) -> None:
        if self.kind == "table" and (
                self.photon_numbers is None or len(self.photon_numbers) != len(self.intensities)
                or any(sum(row) > 1.0 + 1e-9 for row in self.photon_numbers)):
            raise ValueError("a 'table' source needs photon_numbers: one P(n) row per "
                             "intensity [mu, *decoys], each summing to at most 1")

    @property
    def intensities(self) -> list[float]:
        return [self.mu, *self.decoys]

    def photon_number_distributions(self) -> list[np.ndarray]:
        """P(n) of each intensity [mu, *decoys], as the sender characterised its source."""
        rows = self.photon_numbers or [None] * len(self.intensities)
        return [sources.distribution(self.kind, mu, self.herald_efficiency,
                                     self.herald_dark_count_probability, row)
                for mu, row in zip(self.intensities, rows)]

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
    # detectors as they are (docs/scenarios.md "Detector effects"); defaults: ideal
    efficiency_1: Probability | None = None  # the outcome-1 detector's (mismatch); None: same
    dead_time_ns: NonNegative = 0.0  # non-paralysable, per detector, rounded to whole slots
    afterpulse_probability: Probability = 0.0  # carrier trapped per avalanche
    afterpulse_decay_ns: Positive = 100.0  # mean trap release delay (exponential)
    gate_width_ns: Positive | None = None  # gated detectors; None: free-running
    dark_count_rate_hz: NonNegative | None = None  # if set, replaces dark_count_probability

    def per_gate_dark_count(self, rate_hz: float) -> float:
        """p_dc per gate: configured, or 1 - exp(-R_dc w), w the gate (else the slot period)."""
        if self.dark_count_rate_hz is None:
            return self.dark_count_probability
        window_s = (self.gate_width_ns * 1e-9 if self.gate_width_ns is not None
                    else 1.0 / rate_hz)
        return detector_effects.gate_dark_count_probability(self.dark_count_rate_hz, window_s)


class SatellitePass(Struct, forbid_unknown_fields=True):
    """``[links.quantum.pass]``: the link's loss follows a satellite pass (circular orbit of
    ``altitude_km``, closest range, Micius optics by default) or a (time, dB) table; times are
    the pass's (0 = closest approach); the source starts at ``start_s``. See docs/scenarios.md."""

    altitude_km: Positive = 500.0
    closest_range_km: Positive | None = None  # default 645; or the station and orbit below
    min_elevation_deg: Annotated[float, Meta(ge=0, lt=90)] = 10.0
    station_lat_deg: Annotated[float, Meta(ge=-90, le=90)] | None = None  # all three, or none
    station_lon_deg: Annotated[float, Meta(ge=-180, le=360)] | None = None
    node_lon_deg: float | None = None  # the orbit's ascending node (Earth-fixed) at time 0
    inclination_deg: Annotated[float, Meta(ge=0, le=180)] = 97.4  # Micius: Sun-synchronous
    earth_rotation: bool = True  # with a station: the Earth turns under the orbit
    start_s: float = -150.0
    divergence_rad: Positive = 5e-6
    aperture_radius_m: Positive = 0.5
    jitter_rad: NonNegative = 0.0
    t_zenith: Annotated[float, Meta(gt=0, le=1)] = 0.516
    eta_fixed: Annotated[float, Meta(gt=0, le=1)] = 0.0513
    loss_t_s: list[float] | None = None  # a loss table instead of the geometry ...
    loss_db: list[float] | None = None  # ... (both, same length), or:
    loss_csv: str | None = None  # "time_s,loss_db" rows, relative to the scenario file

    @property
    def is_table(self) -> bool:
        return self.loss_db is not None

    def geometry(self, t_run) -> satellite.PassPoint:
        if self.station_lat_deg is not None:
            return satellite.station_pass(self.orbit(), np.add(t_run, self.start_s),
                                          math.radians(self.min_elevation_deg))
        return satellite.pass_geometry(self.altitude_km, self.closest_range_km or 645.0,
                                       np.add(t_run, self.start_s),
                                       math.radians(self.min_elevation_deg))

    def orbit(self) -> satellite.Orbit:
        """The station under the orbit (``station_*`` and ``node_lon_deg`` given)."""
        return satellite.Orbit(self.altitude_km, math.radians(self.inclination_deg),
                               math.radians(self.node_lon_deg or 0.0),
                               math.radians(self.station_lat_deg or 0.0),
                               math.radians(self.station_lon_deg or 0.0), self.earth_rotation)

    def loss_at(self, t_run):
        """Channel loss (dB) at ``t_run`` seconds after the source's start: +inf below the
        minimum elevation or outside the table."""
        if self.is_table:
            return satellite.interpolate_loss_db(np.add(t_run, self.start_s), self.loss_t_s,
                                                 self.loss_db)
        optics = satellite.Optics(self.divergence_rad, self.aperture_radius_m, self.jitter_rad,
                                  self.t_zenith, self.eta_fixed)
        with np.errstate(divide="ignore"):  # no link: eta = 0, loss = inf
            return satellite.pass_loss_db(self.geometry(t_run), optics)

    def transmittance(self, t_run):
        """10^(-loss/10) at run times ``t_run`` (0 where there is no link)."""
        return np.power(10.0, -np.asarray(self.loss_at(t_run)) / 10.0)


class Raman(Struct, forbid_unknown_fields=True):
    """``[links.quantum.raman]``: the link's classical light shares the quantum fibre (Era10,
    ``physics.raman``). Each end's transmitter launches ``launch_power_mw`` while a frame is on
    the line; its duty cycle is the relay's measured bytes over ``line_rate_mbps``. Noise is
    filtered by ``filter_nm`` at ``wavelength_nm``; the pump sees ``db_per_km`` (default the
    quantum link's attenuation)."""

    launch_power_mw: Positive = 1.0
    rho_per_km_nm: Positive = 3e-9
    filter_nm: Positive = 0.8
    wavelength_nm: Positive = 1550.0
    line_rate_mbps: Positive = 1000.0
    db_per_km: NonNegative | None = None


class QuantumLink(Struct, forbid_unknown_fields=True):
    attenuation_db_per_km: NonNegative = 0.2
    frame_ms: Annotated[float, Meta(gt=0, le=1000)] = 10.0
    source: Source = msgspec.field(default_factory=Source)
    detector: Detector = msgspec.field(default_factory=Detector)
    pass_: SatellitePass | None = msgspec.field(default=None, name="pass")  # time-varying loss
    raman: Raman | None = None  # classical light in the same fibre (noise from measured load)

    def __post_init__(self) -> None:
        """A gate fits in one slot period."""
        gate = self.detector.gate_width_ns
        if gate is not None and gate > 1e9 / self.source.rate_hz:
            raise ValueError("detector.gate_width_ns: longer than the source's slot period")


class Link(Struct, forbid_unknown_fields=True):
    a: Name
    b: Name
    length_km: NonNegative
    name: Name | None = None
    classical: ClassicalLink = msgspec.field(default_factory=ClassicalLink)
    quantum: QuantumLink | None = None
    entanglement: LinkEntanglement | None = None  # heralded pair generation; see below
    flight: LinkFlight | None = None  # flying qubits of hybrid packets (emulator/hybrid_config)

    @property
    def id(self) -> str:
        return self.name or f"{self.a}-{self.b}"

    @property
    def classical_delay_s(self) -> float:
        """One-way classical delay: configured, else the fibre's group delay (plus, on a
        satellite pass, the light time at the source's start; fixed for the run)."""
        if self.classical.delay_ms is not None:
            return self.classical.delay_ms / 1000.0
        spec = self.quantum.pass_ if self.quantum is not None else None
        if spec is not None and not spec.is_table:
            return float(fibre_delay(self.length_km)
                         + satellite.light_time(spec.geometry(0.0).range_km))
        return float(fibre_delay(self.length_km))

    def classical_delay_schedule(self, step_s: float = 1.0,
                                 span_s: float = 900.0) -> list[tuple[float, float]] | None:
        """On a satellite pass (geometry, no configured delay): (run time, fibre delay + L/c)
        every ``step_s`` up to ``span_s`` (the relay holds the last); pass time is counted from
        the run's start here, from the source's on the quantum link (~1 s apart, 25 us)."""
        spec = self.quantum.pass_ if self.quantum is not None else None
        if self.classical.delay_ms is not None or spec is None or spec.is_table:
            return None
        return satellite.delay_schedule(spec.geometry, float(fibre_delay(self.length_km)),
                                        step_s, span_s)


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


class NodeClock(Struct, forbid_unknown_fields=True):
    """``[nodes.clock]``: the node's clock runs ``detuning_hz`` away from the reference; qubits
    in its memory precess at that rate (emulator/physics/clocks.py). Omitted = no offset."""

    detuning_hz: Annotated[float, Meta(ge=-1e9, le=1e9)] = 0.0


class LinkEntanglement(Struct, forbid_unknown_fields=True):
    """``[links.entanglement]``: heralded pairs from a midpoint station (Barrett-Kok style
    linear-optics BSM, efficiency ``bsm_efficiency``); each photon crosses half the fibre."""

    attempt_rate_hz: Annotated[float, Meta(gt=0, le=1e9)] = 1e5
    source_fidelity: Annotated[float, Meta(ge=0.25, le=1)] = 0.99
    detector_efficiency: Probability = 0.9
    attenuation_db_per_km: NonNegative = 0.2
    bsm_efficiency: Probability = 0.5
    wavelength_nm: Annotated[int, Meta(gt=0)] | None = None  # the memories' emission
    fibre_db_per_km: dict[str, NonNegative] = {}  # nm -> dB/km; overrides the one above
    conversion: FrequencyConversion | None = None  # a stage at each end, see physics/conversion

    def __post_init__(self) -> None:
        """Wavelength keys are whole nm; a converting link knows its loss at both wavelengths."""
        if not all(k.isdigit() and int(k) > 0 for k in self.fibre_db_per_km):
            raise ValueError("fibre_db_per_km: keys are wavelengths in whole nm")
        if self.conversion is not None:
            needed = {"wavelength_nm": self.wavelength_nm,
                      "conversion.target_wavelength_nm": self.conversion.target_wavelength_nm}
            for field, nm in needed.items():
                if nm is None or str(nm) not in self.fibre_db_per_km:
                    raise ValueError(f"{field}: a converting link needs it, with its loss in "
                                     f"fibre_db_per_km")
        elif self.wavelength_nm is not None and self.fibre_db_per_km \
                and str(self.wavelength_nm) not in self.fibre_db_per_km:
            raise ValueError("wavelength_nm: not in fibre_db_per_km")


class FrequencyConversion(Struct, forbid_unknown_fields=True):
    """``[links.entanglement.conversion]``: shifts each end's photon to a telecom wavelength;
    defaults after Bock et al., Nat. Commun. 9, 1998 (2018) (854 -> 1310 nm)."""

    efficiency: Annotated[float, Meta(gt=0, le=1)] = 0.265
    noise_rate_hz: NonNegative = 11.4  # noise photons per second into the fibre
    gate_s: Annotated[float, Meta(gt=0, le=1)] = 1e-6  # the station's detection gate
    target_wavelength_nm: Annotated[int, Meta(gt=0)] = 1310


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


class Fault(Struct, forbid_unknown_fields=True):
    """A link fault (cut, restore, corrupt, degrade: ``link``, on its classical or quantum
    ``plane`` or both) or a node crash (``node``, SIGKILL; with ``restart_after_s`` emulated
    seconds later the supervisor starts it again). ``degrade`` adds ``db`` of attenuation to
    the quantum plane and the datagram loss probability ``loss`` to the classical plane;
    ``for_s`` undoes a cut or a degrade that much later."""

    at_s: NonNegative
    action: Literal["cut", "restore", "corrupt", "degrade", "crash"]  # corrupt: flip a TCP bit
    link: Name | None = None
    node: Name | None = None
    plane: Literal["classical", "quantum", "both"] = "both"
    db: NonNegative = 0.0
    loss: Probability = 0.0
    for_s: Positive | None = None
    restart_after_s: NonNegative | None = None


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


class RoutingWeights(Struct, forbid_unknown_fields=True):
    """``[routing.weights]`` of the ``weighted`` metric: cost = sum of weight x raw metric."""

    length_km: NonNegative = 0.0
    rtt_ms: NonNegative = 0.0
    loss_db: NonNegative = 0.0
    hop: NonNegative = 0.0


class Routing(Struct, forbid_unknown_fields=True):
    """``[routing]``: every node runs link-state routing over its links' classical channels
    (nodes/net, docs/net.md); the timers are emulated seconds, the metric is the same
    everywhere (``rtt`` is measured from the hellos, ``loss_db`` is the quantum link's)."""

    hello_interval_s: Positive = 1.0
    dead_interval_s: Positive = 4.0
    retransmit_interval_s: Positive | None = None  # LSA retransmission; default: hello interval
    metric: Literal["length_km", "rtt", "loss_db", "hops", "weighted"] = "length_km"
    weights: RoutingWeights | None = None


def _check_routing(sc: Scenario) -> None:
    routing = sc.routing
    if routing is None:
        return
    if routing.dead_interval_s <= routing.hello_interval_s:
        raise ScenarioError("routing.dead_interval_s: must be longer than hello_interval_s")
    if routing.metric == "weighted":
        w = routing.weights
        if w is None or not any((w.length_km, w.rtt_ms, w.loss_db, w.hop)):
            raise ScenarioError("routing.weights: the weighted metric needs a weight > 0")
    elif routing.weights is not None:
        raise ScenarioError(f"routing.weights: only for metric = 'weighted', not "
                            f"{routing.metric!r}")
    pairs: set[frozenset[str]] = set()
    for i, link in enumerate(sc.links):
        pair = frozenset((link.a, link.b))
        if pair in pairs:
            raise ScenarioError(f"links[{i}]: routing needs at most one link between "
                                f"{link.a!r} and {link.b!r}")
        pairs.add(pair)


def routing_of(sc: Scenario) -> Routing | None:
    """The routing every node runs: ``[routing]``, or its defaults when an app kind needs the
    routed plane (``AppKind.extra["routing"]``), else None."""
    if sc.routing is not None:
        return sc.routing
    if any(kind_of(app).extra.get("routing") for app in sc.apps):
        return Routing()
    return None


class Scenario(Struct, forbid_unknown_fields=True):
    """A validated scenario; ``apps`` holds each app's spec Struct (its kind's ``spec``)."""

    scenario: Meta_
    nodes: list[Node]
    links: list[Link] = []
    apps: list[Any] = []  # tables until parse_scenario converts them with the registered specs
    faults: list[Fault] = []
    expect: list[Expect] = []
    kms: Kms = msgspec.field(default_factory=Kms)
    routing: Routing | None = None  # link-state routing in every node (docs/net.md)

    def saes(self) -> dict[str, str]:
        """Every declared SAE id and the node it is attached to."""
        return {sae.id: node.name for node in self.nodes for sae in node.sae}

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

    def find_link(self, name: str | None, a: str, b: str) -> Link | None:
        """The link called ``name``, or without a name the one between ``a`` and ``b``."""
        if name is None:
            return self.link_between(a, b)
        return next((link for link in self.links if link.id == name), None)

    def shortest_path(self, a: str, b: str) -> list[str] | None:
        return shortest_path(self, a, b)

    def require_entanglement_link(self, i: int, a: str, b: str, name: str | None) -> Link:
        """The direct link with pairs that ``apps[i]`` needs between ``a`` and ``b``."""
        if a == b:
            raise ScenarioError(f"apps[{i}].b: the two ends must differ")
        link = self.find_link(name, a, b)
        if link is None or link.entanglement is None:
            raise ScenarioError(f"apps[{i}].b: no direct entanglement link between {a!r} "
                                f"and {b!r}")
        return link


_PATH = re.compile(r"`\$((?:\.[^.`\[]+|\[\d+\])*)`")


def _msgspec_error(exc: msgspec.ValidationError, prefix: str = "") -> ScenarioError:
    """Turn msgspec's "... - at `$.links[0].a`" into "links[0].a: ..." (under ``prefix``)."""
    text = str(exc)
    match = _PATH.search(text)
    path = prefix + (match.group(1) if match else "")
    path = path.lstrip(".")
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
    try:
        check_programs(sc.nodes)
    except ProgramError as exc:
        raise ScenarioError(str(exc)) from None
    saes: set[str] = set()
    for i, node in enumerate(sc.nodes):
        for j, sae in enumerate(node.sae):
            if sae.id in saes:
                raise ScenarioError(f"nodes[{i}].sae[{j}].id: duplicate SAE {sae.id!r}")
            saes.add(sae.id)
    if sc.kms.min_key_size > sc.kms.key_size:
        raise ScenarioError("kms.min_key_size: larger than kms.key_size")
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
        if link.quantum is not None and link.quantum.pass_ is not None:
            _check_pass(link.quantum.pass_, f"links[{i}].quantum.pass")
    for i, app in enumerate(sc.apps):
        for end in ("a", "b"):  # the usual ends, checked first for a precise field path
            node = getattr(app, end, None)
            if isinstance(node, str) and node not in names:
                raise ScenarioError(f"apps[{i}].{end}: unknown node {node!r}")
        kind = kind_of(app)
        kind.validate(sc, i, app)
        for node in kind.nodes(app):
            if node not in names:
                raise ScenarioError(f"apps[{i}]: unknown node {node!r}")
    for i, fault in enumerate(sc.faults):
        check_fault(fault, f"faults[{i}]", names, link_ids)
    _check_routing(sc)


def check_fault(fault: Fault, path: str, names: set[str], link_ids: set[str]) -> None:
    """A crash names a node (and no link, plane, degradation or for_s); every other action
    names a link; db and loss belong to degrade, which needs one of them on its plane(s)."""
    degraded = fault.db != 0 or fault.loss != 0
    if fault.action == "crash":
        if fault.node is None or fault.link is not None:
            raise ScenarioError(f"{path}: action 'crash' takes node, not link")
        if fault.node not in names:
            raise ScenarioError(f"{path}.node: unknown node {fault.node!r}")
        if fault.for_s is not None:
            raise ScenarioError(f"{path}.for_s: a crash ends with restart_after_s")
        if fault.plane != "both" or degraded:
            raise ScenarioError(f"{path}: a crash has no plane, db or loss")
        return
    if fault.link is None or fault.node is not None:
        raise ScenarioError(f"{path}: action {fault.action!r} takes link, not node")
    if fault.restart_after_s is not None:
        raise ScenarioError(f"{path}.restart_after_s: only a crash is restarted")
    if fault.link not in link_ids:
        raise ScenarioError(f"{path}.link: unknown link {fault.link!r}")
    if fault.action != "degrade" and degraded:
        raise ScenarioError(f"{path}: db and loss belong to action 'degrade'")
    if fault.action == "corrupt" and fault.plane == "quantum":
        raise ScenarioError(f"{path}.plane: corrupt flips a bit of classical traffic")
    if fault.action == "corrupt" and fault.for_s is not None:
        raise ScenarioError(f"{path}.for_s: a corrupt fault is one flipped bit")
    if fault.action == "degrade":
        quantum = fault.plane != "classical" and fault.db > 0
        classical = fault.plane != "quantum" and fault.loss > 0
        if not (quantum or classical):
            raise ScenarioError(f"{path}: degrade needs db > 0 (quantum plane) or loss > 0 "
                                f"(classical plane) on plane {fault.plane!r}")


def _check_pass(spec: SatellitePass, path: str) -> None:
    """A loss table is whole and increasing; the geometry is physical."""
    if spec.loss_csv is not None:
        raise ScenarioError(f"{path}.loss_csv: only a scenario file can name a CSV "
                            "(load_scenario reads it)")
    if (spec.loss_t_s is None) != (spec.loss_db is None):
        raise ScenarioError(f"{path}: loss_t_s and loss_db go together")
    if spec.is_table:
        try:
            spec.loss_at(0.0)
            if len(spec.loss_t_s) != len(spec.loss_db):
                raise ValueError("loss_t_s and loss_db differ in length")
        except ValueError as exc:
            raise ScenarioError(f"{path}.loss_t_s: {exc}") from None
    elif spec.closest_range_km is not None and spec.closest_range_km < spec.altitude_km:
        raise ScenarioError(f"{path}.closest_range_km: below the altitude")
    _check_station(spec, path)


def _check_station(spec: SatellitePass, path: str) -> None:
    """A station needs latitude, longitude and the orbit's node, replaces closest_range_km, and
    must see the satellite above the minimum elevation."""
    given = [spec.station_lat_deg is not None, spec.station_lon_deg is not None,
             spec.node_lon_deg is not None]
    if not any(given):
        return
    if not all(given):
        missing = [f for f, g in zip(("station_lat_deg", "station_lon_deg", "node_lon_deg"),
                                     given, strict=True) if not g]
        raise ScenarioError(f"{path}.{missing[0]}: a station needs station_lat_deg, "
                            "station_lon_deg and node_lon_deg")
    if spec.closest_range_km is not None or spec.is_table:
        raise ScenarioError(f"{path}.station_lat_deg: a station's geometry replaces "
                            "closest_range_km and a loss table")
    highest = satellite.highest_elevation(spec.orbit())
    if highest < math.radians(spec.min_elevation_deg):
        raise ScenarioError(f"{path}.node_lon_deg: the satellite never rises above "
                            f"min_elevation_deg at this station (highest "
                            f"{math.degrees(highest):.1f} deg)")


def _read_loss_csvs(raw: dict, base: Path) -> None:
    """Replace each ``[links.quantum.pass]`` ``loss_csv`` by its (time_s, loss_db) columns."""
    for i, link in enumerate(raw.get("links", []) if isinstance(raw.get("links"), list) else []):
        spec = ((link.get("quantum") or {}) if isinstance(link, dict) else {}).get("pass")
        if not isinstance(spec, dict) or not isinstance(spec.get("loss_csv"), str):
            continue
        path = f"links[{i}].quantum.pass.loss_csv"
        csv = base / spec.pop("loss_csv")
        try:
            rows = [line.split(",") for line in csv.read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
            if rows and not _is_number(rows[0][0]):
                rows = rows[1:]  # a header line
            if any(len(row) != 2 for row in rows):
                raise ValueError("each row needs two columns, time_s and loss_db")
            spec["loss_t_s"] = [float(row[0]) for row in rows]
            spec["loss_db"] = [float(row[1]) for row in rows]
        except OSError as exc:
            raise ScenarioError(f"{path}: cannot read {csv} ({exc.strerror})") from None
        except ValueError as exc:
            raise ScenarioError(f"{path}: {csv}: {exc}") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_finite(value: Any, path: str) -> None:
    """TOML allows ``inf`` and ``nan``; no field of a scenario means either, so reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ScenarioError(f"{path or '(top level)'}: must be a finite number, got {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for k, item in enumerate(value):
            _check_finite(item, f"{path}[{k}]")


def _app_union() -> Any:
    specs = tuple(kind.spec for kind in kinds().values())
    return Union[specs]  # noqa: UP007 (a runtime union of the registered spec Structs)


def _convert_app(i: int, raw: Any) -> Any:
    """One ``[[apps]]`` table into its kind's spec; errors read ``apps[i].field: ...``."""
    try:
        union = _app_union()
    except PluginError as exc:
        raise ScenarioError(f"apps[{i}].kind: {exc}") from None
    try:
        return msgspec.convert(raw, union)
    except msgspec.ValidationError as exc:
        raise _msgspec_error(exc, f"apps[{i}]") from None


def parse_scenario(raw: dict, overrides: list[str] = ()) -> Scenario:
    for assignment in overrides:
        apply_override(raw, assignment)
    _check_finite(raw, "")
    try:
        sc = msgspec.convert(raw, Scenario)
    except msgspec.ValidationError as exc:
        raise _msgspec_error(exc) from None
    sc.apps = [_convert_app(i, app) for i, app in enumerate(sc.apps)]
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
    raw = read_raw(path)
    _read_loss_csvs(raw, Path(path).parent)
    return parse_scenario(raw, overrides)
