"""What each child is handed: a node's config holds its own apps and its part of the scenario
only (own links with physics, other links' names and ends), and survives the JSON round trip."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import msgspec

from emulator.apps import kinds
from emulator.child_config import (
    DaemonAddress,
    LinkEnds,
    MqttAddress,
    NodeConfig,
    node_apps,
    node_view,
    read_config,
    write_config,
)
from emulator.scenario import parse_scenario

CHAIN = {
    "scenario": {"name": "chain", "duration_s": 3},
    "nodes": [{"name": "alice"}, {"name": "bob", "memory": {"slots": 7, "t2_s": 0.25}},
              {"name": "charlie"}],
    "links": [
        {"a": "alice", "b": "bob", "length_km": 31.5,
         "quantum": {"attenuation_db_per_km": 0.337, "source": {"mu": 0.61, "decoys": []}}},
        {"a": "bob", "b": "charlie", "length_km": 2.5, "entanglement": {"source_fidelity": 0.97}},
    ],
    "apps": [{"kind": "qkd.bb84", "a": "alice", "b": "bob", "postprocessing": False},
             {"kind": "teleport", "a": "bob", "b": "charlie", "count": 5}],
}


def config_for(sc, name: str) -> NodeConfig:
    return NodeConfig(run_id="r", t0=0.0, time_scale=1.0, seed=1, name=name, token="t",
                      daemon=DaemonAddress("127.0.0.1", 1), mqtt=MqttAddress("127.0.0.1", 2),
                      view=node_view(sc, name), apps=node_apps(sc, name))


def test_a_node_sees_only_its_links_physics_and_its_apps(tmp_path: Path) -> None:
    sc = parse_scenario(copy.deepcopy(CHAIN))
    path = tmp_path / "charlie.config.json"
    write_config(path, config_for(sc, "charlie"))
    text = path.read_text()
    for leak in ("0.337", "31.5", "0.61", "\"detector\":", "\"source\":", "postprocessing",
                 "qkd.bb84"):
        assert leak not in text, f"charlie's config contains {leak!r}"
    raw = json.loads(text)
    assert raw["view"]["other_links"] == [{"name": "alice-bob", "a": "alice", "b": "bob"}]
    assert [a["kind"] for a in raw["apps"]] == ["teleport"]
    config = read_config(path, NodeConfig)
    assert config.view.link("bob-charlie").entanglement.source_fidelity == 0.97
    assert config.view.link("alice-bob") == LinkEnds("alice-bob", "alice", "bob")
    assert config.view.find_link(None, "charlie", "bob").id == "bob-charlie"
    assert config.view.link_between("alice", "charlie") is None
    assert config.view.nodes == ["alice", "bob", "charlie"] and config.view.duration_s == 3


def test_each_end_gets_its_apps_with_the_index_that_tags_its_entries() -> None:
    sc = parse_scenario(copy.deepcopy(CHAIN))
    bob = config_for(sc, "bob")
    assert [(a.index, a.kind) for a in bob.apps] == [(0, "qkd.bb84"), (1, "teleport")]
    assert bob.view.memory.slots == 7 and bob.view.memory.t2_s == 0.25
    assert [link.id for link in bob.view.links] == ["alice-bob", "bob-charlie"]
    assert bob.view.other_links == []
    for app in bob.apps:  # what the node converts: the validated spec, unchanged
        assert msgspec.convert(app.spec, kinds()[app.kind].spec) == sc.apps[app.index]
    alice = config_for(sc, "alice")
    assert alice.view.memory.slots == 16  # defaults when the scenario gives none
    assert [link.id for link in alice.view.other_links] == ["bob-charlie"]
