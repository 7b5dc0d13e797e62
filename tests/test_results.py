"""result.json assembly: metric lookup, expectations, and routing each app's node entries to
its kind's merge (grouped by app index, partial sets included)."""

from __future__ import annotations

import copy
import io
import math

import pytest
from rich.console import Console

from emulator.results import (
    KIND_FIELD,
    app_sections,
    check_expectations,
    join_ends,
    metric_value,
    print_summary,
)
from emulator.scenario import Expect, parse_scenario

TWO_LINKS = {
    "scenario": {"name": "t", "time_scale": 0.5},
    "nodes": [{"name": "alice"}, {"name": "bob"}, {"name": "carol"}],
    "links": [
        {"a": "alice", "b": "bob", "length_km": 10, "quantum": {"source": {"decoys": []}}},
        {"a": "alice", "b": "carol", "length_km": 40, "name": "far",
         "quantum": {"source": {"decoys": []}}},
    ],
    "apps": [{"kind": "qkd.bb84", "a": "alice", "b": "bob", "postprocessing": False},
             {"kind": "qkd.bb84", "a": "alice", "b": "carol", "postprocessing": False}],
}


def sender(app: int, pulses: int) -> dict:
    return {"link": "ignored", "protocol": "bb84", "role": "sender", "pulses": pulses,
            "sifted_bits": 7, "key_sha256_a": "k", "cpu_s_a": 2.0, "auth_rejected": 1, "app": app}


def receiver(app: int, pulses: int, sifted: int) -> dict:
    return {"link": "ignored", "protocol": "bb84", "role": "receiver", "pulses": pulses,
            "detections": 900, "sifted_bits": sifted, "qber": 0.02, "cpu_s_b": 4.0,
            "auth_rejected": 2, "app": app}


@pytest.fixture
def scenario():
    return parse_scenario(copy.deepcopy(TWO_LINKS))


def test_entries_are_grouped_by_app_index_not_by_what_they_claim(scenario) -> None:
    rate = scenario.links[0].quantum.source.rate_hz
    entries = [sender(0, 10**8), receiver(0, 10**8, 5000), receiver(1, 2 * 10**8, 3000),
               sender(1, 2 * 10**8), receiver(5, 1, 1), {"pulses": 3}]  # last two: no app
    sections = app_sections(scenario, entries)
    near, far = sections["qkd"]
    assert (near["link"], far["link"]) == ("alice-bob", "far")  # from the scenario
    assert near["sifted_bits"] == 5000 and far["sifted_bits"] == 3000
    assert near["sifted_bits_a"] == 7 and near["key_sha256_a"] == "k"
    assert near["auth_rejected"] == 3  # both ends' rejects add up
    assert near["sifted_rate_bps"] == pytest.approx(5000 / (10**8 / rate))
    # realtime factor: source wall seconds (emulated / time_scale) per busiest CPU second
    assert near["realtime_factor"] == pytest.approx((10**8 / rate / 0.5) / 4.0)
    assert far["predicted"]["gain"] < near["predicted"]["gain"]  # 40 km vs 10 km
    assert {near[KIND_FIELD], far[KIND_FIELD]} == {"qkd.bb84"}
    assert "app" not in near and "role" not in near
    assert sections["entanglement"] == [] and sections["teleport"] == []


def test_partial_entries_when_a_node_reported_nothing(scenario) -> None:
    """The receiver died: the sender's half still shows, with the prediction beside it."""
    (near,) = app_sections(scenario, [sender(0, 10**8)])["qkd"]
    assert near["key_sha256_a"] == "k" and near["pulses"] == 10**8
    assert "detections" not in near and near["sifted_rate_bps"] == 0.0
    assert 0 < near["predicted"]["gain"] < 1
    assert app_sections(scenario, [])["qkd"] == []  # nobody reported: nothing to show


def test_join_ends_prefers_the_report_and_drops_routing_fields() -> None:
    joined = join_ends([{"role": "a_end", "x": 1, "y": 1, "app": 0},
                        {"role": "report", "section": "s", "x": 2, "app": 0}], "n")
    assert joined == {"x": 2, "y": 1, "name": "n"}
    assert join_ends([], "n") == {"name": "n"}


RESULT = {
    "qkd": [{"link": "alice-bob", "qber": 0.02, "predicted": {"qber": 0.021}, "name": None}],
    "entanglement": [{"name": "bbm92/alice-bob", "chsh": 2.7, "label": "x"}],
    "teleport": [],
    "links": [{"name": "alice-bob", "classical": {"messages": 4}}],
}


@pytest.mark.parametrize(("metric", "value"), [
    ("qkd.alice-bob.qber", 0.02),
    ("qkd.alice-bob.predicted.qber", 0.021),
    ("entanglement.bbm92/alice-bob.chsh", 2.7),
    ("links.alice-bob.classical.messages", 4),
    ("qkd.nowhere.qber", None),
    ("qkd.alice-bob.qber.deeper", None),
    ("teleport.x.fidelity_mean", None),
    ("missing", None),
])
def test_metric_lookup(metric: str, value) -> None:
    assert metric_value(RESULT, metric) == value


def test_expectations_need_a_number_that_holds() -> None:
    checked = check_expectations(RESULT, [
        Expect(metric="qkd.alice-bob.qber", lt=0.05),
        Expect(metric="qkd.alice-bob.qber", gt=0.05),
        Expect(metric="entanglement.bbm92/alice-bob.label", ge=0),  # a string: no value
        Expect(metric="qkd.gone.qber", lt=1),
    ])
    assert [c["ok"] for c in checked] == [True, False, False, False]
    assert [c["value"] for c in checked] == [0.02, 0.02, None, None]
    assert checked[0]["condition"] == "< 0.05"
    assert not Expect(metric="m", lt=1).holds(math.nan)


def test_summary_prints_each_kind_table(scenario) -> None:
    result = {**app_sections(scenario, [sender(0, 10**8), receiver(0, 10**8, 5000)]),
              "links": RESULT["links"],
              "expectations": check_expectations(RESULT, [Expect(metric="qkd.alice-bob.qber",
                                                                 lt=0.05)])}
    out = io.StringIO()
    print_summary(Console(file=out, width=120), result)
    text = out.getvalue()
    assert "QKD alice-bob (bb84)" in text and "classical links" in text
    assert "expectations" in text and "5,000" in text


def test_external_programs_file_their_entries_by_section_and_name() -> None:
    sc = parse_scenario({
        "scenario": {"name": "t"}, "nodes": [{"name": "alice"}, {"name": "bob"}],
        "links": [{"a": "alice", "b": "bob", "length_km": 1}],
        "apps": [{"kind": "external", "a": "alice", "b": "bob", "command": ["python", "x"]}]})
    sections = app_sections(sc, [
        {"section": "entanglement", "role": "a_end", "name": "ext", "pairs_a": 10, "app": 0},
        {"section": "entanglement", "role": "report", "name": "ext", "pairs": 9, "app": 0},
        {"section": "external", "name": "bob:x", "exit_code": 3, "app": 0}])
    (pairs,) = sections["entanglement"]
    assert (pairs["name"], pairs["pairs"], pairs["pairs_a"]) == ("ext", 9, 10)
    (crashed,) = sections["external"]
    assert crashed["exit_code"] == 3 and "section" not in crashed
