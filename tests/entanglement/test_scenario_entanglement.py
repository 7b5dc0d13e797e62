"""Scenario validation of the entanglement layer: memory/link config, path resolution,
every node on the path runs the pairs app, and errors that name the field path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from emulator.apps import kind_of
from emulator.child_config import node_apps
from emulator.scenario import ScenarioError, load_scenario, parse_scenario
from nodes.entanglement.pairs.spec import PairsApp

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


def test_shortest_path_resolved_and_every_node_on_it_runs_the_app() -> None:
    sc = parse()
    (pairs,) = sc.apps
    assert isinstance(pairs, PairsApp) and pairs.path == ["r1", "r2"]
    assert kind_of(pairs).nodes(pairs) == ["a", "r1", "r2", "b"]
    assert [app.index for app in node_apps(sc, "r1")] == [0]
    assert node_apps(sc, "r1")[0].spec["path"] == ["r1", "r2"]  # resolved before it is sent
    assert node_apps(sc, "x") == []


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
    (lambda r: r["apps"].append({"kind": "entanglement.repeater", "a": "r1", "b": "r1"}),
     "apps[1].kind: Invalid value 'entanglement.repeater'"),
])
def test_errors_name_the_field(change, message) -> None:
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(change)


@pytest.mark.parametrize("name", ["repeater-chain", "teleport", "bbm92"])
def test_shipped_scenarios_validate(name: str) -> None:
    load_scenario(SCENARIOS / f"{name}.toml")
