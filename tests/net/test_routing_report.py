"""result.json ``routing`` from synthetic events, and the ``[routing]`` table's validation."""

from __future__ import annotations

import pytest

from emulator.routing_report import routing_section
from emulator.scenario import ScenarioError, parse_scenario


def scenario(routing: dict | None = None, extra_links: list | None = None, apps=()):
    raw = {"scenario": {"name": "t", "duration_s": 5},
           "nodes": [{"name": n} for n in "abc"],
           "links": [{"a": "a", "b": "b", "length_km": 1}, {"a": "b", "b": "c", "length_km": 1},
                     *(extra_links or [])],
           "apps": list(apps)}
    if routing is not None:
        raw["routing"] = routing
    return parse_scenario(raw)


def ev(kind, at, **fields):
    return {"kind": kind, "t_emu": at + 0.5, "at": at, **fields}  # published later than "at"


def test_detection_and_convergence_per_fault():
    events = [
        {"kind": "start", "t_emu": 0.25},
        ev("route_changed", 0.1, node="a", changed=2),  # start-up: not a reroute
        {"kind": "fault", "action": "cut", "link": "a-b", "t_emu": 1.0},
        ev("neighbour_down", 1.30, node="b", link="a-b", neighbour="a"),
        ev("neighbour_down", 1.31, node="a", link="a-b", neighbour="b"),
        ev("route_changed", 1.30, node="b", changed=1),
        ev("route_changed", 1.32, node="c", changed=1),
        ev("route_changed", 2.9, node="c", changed=1),  # long after: not this burst
        {"kind": "fault", "action": "restore", "link": "a-b", "t_emu": 3.0},
        ev("neighbour_up", 3.05, node="a", link="a-b", neighbour="b"),
        ev("route_changed", 3.06, node="a", changed=1),
        {"kind": "fault", "action": "crash", "node": "b", "pid": 7, "t_emu": 4.0},
        ev("neighbour_down", 4.4, node="a", link="a-b", neighbour="b"),
        ev("route_changed", 4.4, node="a", changed=2, unreachable=2),
        {"kind": "node_restarted", "node": "b", "t_emu": 4.6},
        ev("neighbour_up", 4.62, node="c", link="b-c", neighbour="b"),
        ev("route_changed", 4.7, node="c", changed=1),
    ]
    got = routing_section(scenario({"hello_interval_s": 0.1, "dead_interval_s": 0.4}),
                          events)["routing"]
    cut, restore, crash, restart = got["faults"]
    assert [f["at_s"] for f in got["faults"]] == pytest.approx([0.75, 2.75, 3.75, 4.35])
    assert (cut["action"], cut["target"], cut["detected_by"]) == ("cut", "a-b", "b")
    assert cut["detection_ms"] == pytest.approx(300) and cut["convergence_ms"] == pytest.approx(20)
    assert restore["detection_ms"] == pytest.approx(50)
    assert restore["convergence_ms"] == pytest.approx(10)
    assert crash["detection_ms"] == pytest.approx(400) and crash["convergence_ms"] == 0
    assert restart["detection_ms"] == pytest.approx(20)
    assert restart["convergence_ms"] == pytest.approx(80)
    assert got["reroutes"] == 6  # route changes from the first fault on
    assert got["detection_ms"] == pytest.approx(400)
    assert got["convergence_ms_max"] == pytest.approx(80)


def test_an_unnoticed_cut_has_no_times_and_quantum_cuts_do_not_count():
    events = [{"kind": "fault", "action": "cut", "link": "a-b", "t_emu": 1.0},
              {"kind": "fault", "action": "cut", "link": "b-c", "plane": "quantum", "t_emu": 1.2},
              {"kind": "fault", "action": "restore", "link": "a-b", "t_emu": 2.0},
              ev("neighbour_down", 2.5, node="a", link="a-b", neighbour="b")]  # after the restore
    got = routing_section(scenario({}), events)["routing"]
    assert [f["action"] for f in got["faults"]] == ["cut", "restore"]
    assert got["faults"][0]["detection_ms"] is None and got["detection_ms"] is None


def test_no_routing_no_section():
    assert routing_section(scenario(), []) == {}


def test_stream_app_turns_routing_on_with_defaults():
    sc = scenario(apps=[{"kind": "classical.stream", "a": "a", "b": "c"}])
    assert routing_section(sc, [])["routing"]["hello_interval_s"] == 1.0


@pytest.mark.parametrize("routing, message", [
    ({"hello_interval_s": 1, "dead_interval_s": 1}, "routing.dead_interval_s"),
    ({"metric": "weighted"}, "routing.weights"),
    ({"metric": "weighted", "weights": {"hop": 0}}, "routing.weights"),
    ({"metric": "rtt", "weights": {"hop": 1}}, "routing.weights"),
    ({"metric": "furlongs"}, "routing.metric"),
    ({"hello_interval_s": -1}, "routing.hello_interval_s"),
    ({"dead": 3}, "routing"),
])
def test_bad_routing_tables_name_their_field(routing, message):
    with pytest.raises(ScenarioError, match=message.replace(".", r"\.")):
        scenario(routing)


def test_routing_refuses_two_links_between_the_same_nodes():
    with pytest.raises(ScenarioError, match=r"links\[2\]: routing needs at most one link"):
        scenario({}, extra_links=[{"a": "b", "b": "a", "length_km": 2, "name": "again"}])


def test_weighted_metric_accepted():
    sc = scenario({"metric": "weighted", "weights": {"length_km": 1, "rtt_ms": 0.5}})
    assert sc.routing.weights.rtt_ms == 0.5
