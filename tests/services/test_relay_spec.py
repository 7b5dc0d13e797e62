"""kms.relay tables: path resolution over QKD links, checks, and the merge's consumption check."""

from __future__ import annotations

import pytest

from emulator.scenario import ScenarioError, parse_scenario


def bb84(a: str, b: str) -> dict:
    return {"kind": "qkd.bb84", "a": a, "b": b, "psk": f"test secret for {a}{b} ok"}


def chain(names, relay: dict, qkd=None, sae=True, extra_links=()):
    links = [{"a": a, "b": b, "length_km": 5, "quantum": {}} for a, b in zip(names, names[1:])]
    links += [{"a": a, "b": b, "length_km": 5} for a, b in extra_links]
    nodes = [{"name": n} for n in names]
    if sae:
        nodes[0]["sae"] = [{"id": "s0"}]
    qkd = list(zip(names, names[1:])) if qkd is None else qkd
    return parse_scenario({"scenario": {"name": "r"}, "nodes": nodes, "links": links,
                           "apps": [bb84(a, b) for a, b in qkd] + [
                               {"kind": "kms.relay", **relay}]})


def test_path_is_resolved_over_qkd_links_only() -> None:
    names = ["a", "b", "c", "d"]
    sc = chain(names, {"a": "a", "b": "d"}, extra_links=[("a", "d")])  # a-d: no QKD
    relay = sc.apps[-1]
    assert relay.path == ["b", "c"] and relay.full_path == names


def test_mistakes_are_reported_with_their_path() -> None:
    names = ["a", "b", "c"]
    with pytest.raises(ScenarioError, match=r"^apps\[2\]: kms.relay stores keys"):
        chain(names, {"a": "a", "b": "c"}, sae=False)
    with pytest.raises(ScenarioError, match=r"^apps\[1\]\.path: no path of QKD links"):
        chain(names, {"a": "a", "b": "c"}, qkd=[("a", "b")])
    with pytest.raises(ScenarioError, match=r"^apps\[3\]\.path\[0\]: no QKD link between"):
        chain(["a", "b", "c", "d"], {"a": "a", "b": "d", "path": ["c"]})
    with pytest.raises(ScenarioError, match=r"^apps\[2\]\.path: a node appears twice"):
        chain(names, {"a": "a", "b": "c", "path": ["c"]})
    with pytest.raises(ScenarioError, match=r"^apps\[2\]\.b: the two ends must differ"):
        chain(names, {"a": "a", "b": "a"})
    with pytest.raises(ScenarioError, match=r"^apps\[2\]\.window"):
        chain(names, {"a": "a", "b": "c", "window": 0})


def merged(entries, names=("a", "b", "c")):
    from emulator.apps import kind_of

    sc = chain(list(names), {"a": names[0], "b": names[-1]})
    relay = sc.apps[-1]
    (entry,) = kind_of(relay).merge(sc, relay, entries)
    return entry


def node(name, consumed, steps, **counts):
    return {"node": name, "key_bits": 256, "consumed_bits": consumed, "steps_sent": steps,
            "bits_consumed": sum(consumed.values()), **counts}


def test_merge_checks_that_both_ends_of_every_link_spent_the_forwards_bits() -> None:
    good = [node("a", {"b": 512}, 2, originated=2, delivered=2),
            node("b", {"a": 512, "c": 512}, 2, forwarded=2),
            node("c", {"b": 512}, 0, stored=2)]
    entry = merged(good)
    assert entry["consumption_ok"] and entry["keys_delivered"] == 2
    assert entry["relayed_bits"] == 512 and entry["relays"][0]["bits_consumed"] == 1024
    assert [(link["link"], link["bits_consumed_a"], link["bits_consumed_b"])
            for link in entry["links"]] == [("a-b", 512, 512), ("b-c", 512, 512)]
    bad = [dict(good[0]), dict(good[1]), node("c", {"b": 256}, 0, stored=1)]
    assert not merged(bad)["consumption_ok"]
    partial = merged(good[:2])  # the target reported nothing (it died): not ok, no crash
    assert not partial["consumption_ok"] and partial["reported"] == ["a", "b"]


def test_shipped_relay_scenarios_validate_with_their_shape() -> None:
    from pathlib import Path

    from emulator.scenario import load_scenario

    root = Path(__file__).resolve().parents[2] / "scenarios"
    backbone = load_scenario(root / "trusted-relay-backbone.toml")
    (relay,) = [app for app in backbone.apps if type(app).__name__ == "RelayApp"]
    assert len(backbone.links) >= 6 and len(relay.full_path) == len(backbone.links) + 1
    multi = load_scenario(root / "kms-multi-domain.toml")
    domains = {n.name: n.domain for n in multi.nodes}
    assert set(domains.values()) == {"fr", "de"}
    (relay,) = [app for app in multi.apps if type(app).__name__ == "RelayApp"]
    assert domains[relay.a] != domains[relay.b]  # the keys cross the border
