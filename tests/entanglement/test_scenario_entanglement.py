"""Scenario validation of the entanglement layer: memory/link config, path resolution,
repeater roles added once, and errors that name the field path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from emulator.scenario import (
    PairsApp,
    RepeaterApp,
    ScenarioError,
    load_scenario,
    parse_scenario,
    to_builtins,
)

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"

BASE = {
    "scenario": {"name": "t"},
    "nodes": [{"name": n} for n in ("a", "r1", "r2", "b", "x")],
    "links": [{"a": u, "b": v, "length_km": 2, "entanglement": {}}
              for u, v in (("a", "r1"), ("r1", "r2"), ("r2", "b"))]
             + [{"a": "a", "b": "x", "length_km": 1}],
    "apps": [{"kind": "entanglement.pairs", "a": "a", "b": "b"}],
}


def parse(change=None):
    raw = copy.deepcopy(BASE)
    if change:
        change(raw)
    return parse_scenario(raw)


def test_shortest_path_and_repeater_roles_added_once() -> None:
    sc = parse()
    pairs, *repeaters = sc.apps
    assert isinstance(pairs, PairsApp) and pairs.path == ["r1", "r2"]
    assert repeaters == [RepeaterApp("r1", "r1", 0), RepeaterApp("r2", "r2", 0)]
    again = parse_scenario(to_builtins(sc))  # what a node re-validates
    assert again.apps == sc.apps


def test_defaults() -> None:
    sc = parse()
    e = sc.links[0].entanglement
    assert (e.attempt_rate_hz, e.source_fidelity, e.bsm_efficiency) == (1e5, 0.99, 0.5)
    assert sc.nodes[0].memory is None


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r["apps"][0].update(b="x"), "apps[0].path: no path of entanglement links"),
    (lambda r: r["apps"][0].update(path=["r2"]), "apps[0].path[0]: no entanglement link"),
    (lambda r: r["apps"][0].update(purification="dejmps"), "apps[0].purification_rounds"),
    (lambda r: r["apps"].append({"kind": "teleport", "a": "a", "b": "b"}),
     "apps[1].b: no direct entanglement link"),
    (lambda r: r["nodes"][0].update(memory={"slots": 0}), "nodes[0].memory.slots"),
    (lambda r: r["links"][0]["entanglement"].update(source_fidelity=1.5),
     "links[0].entanglement.source_fidelity"),
    (lambda r: r["apps"].append({"kind": "entanglement.repeater", "a": "r1", "b": "r1",
                                 "app": 5}), "apps[1].app"),
])
def test_errors_name_the_field(change, message) -> None:
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(change)


@pytest.mark.parametrize("name", ["repeater-chain", "teleport", "bbm92"])
def test_shipped_scenarios_validate(name: str) -> None:
    load_scenario(SCENARIOS / f"{name}.toml")
