"""``[[faults]]``: a crash names a known node (and no link); link actions name a known link,
a plane, and a degrade its extra dB (quantum) or loss (classical)."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.scenario import ScenarioError, load_scenario

QUICKSTART = Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.toml"

BAD = [
    ('[{at_s = 1, action = "crash", node = "carol"}]', r"^faults\[0\]\.node: unknown node 'carol'"),
    ('[{at_s = 1, action = "crash"}]', r"^faults\[0\]: action 'crash' takes node, not link"),
    ('[{at_s = 1, action = "crash", node = "bob", link = "alice-bob"}]',
     r"^faults\[0\]: action 'crash' takes node"),
    ('[{at_s = 1, action = "crash", node = "bob", for_s = 2}]', r"^faults\[0\]\.for_s: a crash"),
    ('[{at_s = 1, action = "cut", node = "bob"}]', r"^faults\[0\]: action 'cut' takes link"),
    ('[{at_s = 1, action = "cut", link = "alice-bob", restart_after_s = 1}]',
     r"^faults\[0\]\.restart_after_s: only a crash"),
    ('[{at_s = 1, action = "crash", node = "bob", restart_after_s = -1}]',
     r"^faults\[0\]\.restart_after_s: Expected `float` >= 0"),
    ('[{at_s = 1, action = "crash", node = "bob", plane = "quantum"}]',
     r"^faults\[0\]: a crash has no plane"),
    ('[{at_s = 1, action = "cut", link = "alice-bob", plane = "air"}]',
     r"^faults\[0\]\.plane: Invalid enum value 'air'"),
    ('[{at_s = 1, action = "cut", link = "alice-bob", db = 3}]',
     r"^faults\[0\]: db and loss belong to action 'degrade'"),
    ('[{at_s = 1, action = "degrade", link = "alice-bob"}]',
     r"^faults\[0\]: degrade needs db > 0 \(quantum plane\) or loss > 0"),
    ('[{at_s = 1, action = "degrade", link = "alice-bob", plane = "classical", db = 3}]',
     r"^faults\[0\]: degrade needs db > 0 .* on plane 'classical'"),
    ('[{at_s = 1, action = "degrade", link = "alice-bob", loss = 1.5}]',
     r"^faults\[0\]\.loss: Expected `float` <= 1"),
    ('[{at_s = 1, action = "degrade", link = "alice-bob", db = -1}]',
     r"^faults\[0\]\.db: Expected `float` >= 0"),
    ('[{at_s = 1, action = "corrupt", link = "alice-bob", plane = "quantum"}]',
     r"^faults\[0\]\.plane: corrupt flips a bit of classical traffic"),
    ('[{at_s = 1, action = "corrupt", link = "alice-bob", for_s = 1}]',
     r"^faults\[0\]\.for_s: a corrupt fault is one flipped bit"),
]


@pytest.mark.parametrize("value,message", BAD)
def test_bad_faults_name_their_path(value: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_scenario(QUICKSTART, [f"faults={value}"])


def test_a_crash_with_and_without_restart_validates() -> None:
    sc = load_scenario(QUICKSTART, [
        'faults=[{at_s = 1, action = "crash", node = "bob", restart_after_s = 0.5},'
        ' {at_s = 3, action = "crash", node = "alice"}]'])
    assert [(f.node, f.link, f.restart_after_s) for f in sc.faults] == [
        ("bob", None, 0.5), ("alice", None, None)]


def test_planes_and_degrade_validate() -> None:
    sc = load_scenario(QUICKSTART, [
        'faults=[{at_s = 1, action = "cut", link = "alice-bob", plane = "quantum", for_s = 1},'
        ' {at_s = 2, action = "degrade", link = "alice-bob", db = 3, loss = 0.1, for_s = 0.5},'
        ' {at_s = 3, action = "degrade", link = "alice-bob", plane = "classical", loss = 0.2}]'])
    assert [(f.action, f.plane, f.db, f.loss, f.for_s) for f in sc.faults] == [
        ("cut", "quantum", 0.0, 0.0, 1.0), ("degrade", "both", 3.0, 0.1, 0.5),
        ("degrade", "classical", 0.0, 0.2, None)]


def test_a_run_time_request_is_checked_like_a_scenario_fault() -> None:
    from emulator.faults import fault_of
    from emulator.telemetry import FaultRequest

    nodes, links = {"alice", "bob"}, {"alice-bob"}
    fault = fault_of(FaultRequest("1", "degrade", "alice-bob", plane="quantum", db=2.5), 1.5,
                     nodes, links)
    assert (fault.at_s, fault.link, fault.plane, fault.db) == (1.5, "alice-bob", "quantum", 2.5)
    crash = fault_of(FaultRequest("2", "crash", "bob", restart_after_s=1), 0, nodes, links)
    assert (crash.node, crash.restart_after_s) == ("bob", 1.0)
    for request, message in [
            (FaultRequest("3", "cut", "carol-dave"), r"^fault\.link: unknown link 'carol-dave'"),
            (FaultRequest("4", "crash", "carol"), r"^fault\.node: unknown node 'carol'"),
            (FaultRequest("5", "degrade", "alice-bob", loss=2), r"<= 1.0 - at `fault\.loss`"),
            (FaultRequest("6", "cut", "alice-bob", for_s=0), r"> 0.0 - at `fault\.for_s`")]:
        with pytest.raises(ScenarioError, match=message):
            fault_of(request, 0.0, nodes, links)


def test_the_faults_section_joins_each_fault_with_its_effects() -> None:
    from emulator.faults import faults_section

    log = [{"at_s": 1.0, "action": "cut", "target": "a-b", "plane": "both", "t_emu": 11.0},
           {"at_s": 2.0, "action": "restore", "target": "a-b", "plane": "both", "t_emu": 12.0},
           {"at_s": 3.0, "action": "crash", "target": "bob", "t_emu": 13.0},
           {"at_s": 4.0, "action": "cut", "target": "a-b", "plane": "both", "t_emu": 14.0}]
    events = [
        {"kind": "fault_effect", "process": "relay", "link": "a-b", "action": "cut",
         "effect": "classical cut", "t_emu": 11.01},
        {"kind": "fault_effect", "process": "daemon", "link": "a-b", "action": "cut",
         "effect": "quantum transmittance 0", "t_emu": 11.02},
        {"kind": "fault_effect", "process": "relay", "link": "a-b", "action": "cut",
         "effect": "after the next cut", "t_emu": 14.5},
        {"kind": "node_down", "node": "bob", "exit_code": -9, "t_emu": 13.1}]
    rows = faults_section(log, events)
    assert rows[0]["effect"] == "relay: classical cut; daemon: quantum transmittance 0"
    assert rows[1]["effect"] == "no process reported an effect"
    assert rows[2]["effect"] == "node_down (exit -9) at 3.100 s"  # after the start, as at_s
    assert rows[3]["effect"] == "relay: after the next cut"
    assert all("t_emu" not in row for row in rows)


def test_qnet_fault_refuses_bad_input_and_missing_runs(tmp_path: Path) -> None:
    """Exit 2 with the reason for a bad fault or a folder that is not a run's; exit 1 for a
    run that has ended or whose broker is gone (nothing listens on the port)."""
    import json
    import socket

    from typer.testing import CliRunner

    from emulator.cli import app

    runner = CliRunner()

    def fault(*args: str):
        return runner.invoke(app, ["fault", str(tmp_path), *args])

    got = fault("explode", "a-b")
    assert got.exit_code == 2 and "Invalid enum value 'explode'" in got.output
    got = fault("degrade", "a-b", "--loss", "1.5")
    assert got.exit_code == 2 and "at `fault.loss`" in got.output
    got = fault("crash", "bob", "--for", "1")
    assert got.exit_code == 2 and "a crash ends with restart_after_s" in got.output
    got = fault("cut", "a-b")
    assert got.exit_code == 2 and "mqtt-operator.json: not found" in got.output
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "mqtt-operator.json").write_text(json.dumps({
        "run_id": "r", "host": "127.0.0.1", "port": port, "username": "operator",
        "password": "x"}))
    got = fault("cut", "a-b")
    assert got.exit_code == 1 and "the run is not running" in got.output
    (tmp_path / "result.json").write_text("{}")
    got = fault("cut", "a-b")
    assert got.exit_code == 1 and "the run has ended" in got.output
