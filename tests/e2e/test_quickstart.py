"""End to end: the quickstart scenario through ``qnet run``, as a user runs it."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from qnet_process import ROOT, alive, descendants, run_qnet, running_qnet, wait_gone

QUICKSTART = str(ROOT / "scenarios" / "quickstart.toml")
HAVE_MOSQUITTO = shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()

pytestmark = pytest.mark.e2e


def _check_run(result: dict, run_dir: Path) -> None:
    roles = {p["name"]: p["role"] for p in result["processes"]}
    assert {"broker", "daemon", "alice", "bob", "relay-alice-bob"} <= set(roles)
    pids = [p["pid"] for p in result["processes"]]
    assert len(set(pids)) == len(pids) and all(isinstance(p, int) for p in pids)
    assert not [p for p in pids if alive(p)], "a process outlived the run"
    assert (run_dir / "result.json").exists() and (run_dir / "scenario.toml").exists()
    for name in roles:
        assert (run_dir / f"{name}.log").exists()

    (qkd,) = result["qkd"]
    predicted = qkd["predicted"]
    pulses, detections = qkd["pulses"], qkd["detections"]
    assert pulses > 1e8  # ~2 s at 100 MHz at least
    # gain: binomial over pulses, 4 sigma
    sigma_gain = math.sqrt(predicted["gain"] * (1 - predicted["gain"]) / pulses)
    assert abs(qkd["gain"] - predicted["gain"]) < 4 * sigma_gain
    # QBER from the revealed sample: binomial over the sample, 4 sigma
    n = qkd["sample_bits"]
    sigma_qber = math.sqrt(predicted["qber"] * (1 - predicted["qber"]) / n)
    assert abs(qkd["qber"] - predicted["qber"]) < 4 * sigma_qber
    # both ends hold the same number of sifted bits (the sample removed at both)
    assert qkd["sifted_bits"] == qkd["sifted_bits_a"] > 0.4 * detections * 0.9 * 0.9
    link = result["links"][0]["classical"]
    assert link["bytes_ab"] > 0 and link["bytes_ba"] > 0 and link["messages"] > 0
    assert result["expectations"] == [
        {"metric": "qkd.alice-bob.qber", "value": qkd["qber"], "ok": True, "condition": "< 0.05"}]


def test_quickstart_embedded_broker(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_qnet("run", QUICKSTART, "--duration", "3", "--run-dir", str(run_dir),
                    "--json", str(tmp_path / "out.json"), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["ok"] and result["scenario"] == "quickstart" and result["seed"] == 1
    _check_run(result, run_dir)
    assert "QBER" in done.stdout and "predicted" in done.stdout


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto binary not installed")
def test_quickstart_mosquitto_broker(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_qnet("run", QUICKSTART, "--duration", "2", "--run-dir", str(run_dir),
                    "--broker", "mosquitto", "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    _check_run(json.loads((run_dir / "result.json").read_text()), run_dir)


def test_failed_expectation_exits_1(tmp_path: Path) -> None:
    done = run_qnet("run", QUICKSTART, "--duration", "1", "--run-dir", str(tmp_path / "r"),
                    "--set", "expect.0.lt=0.001", "--no-progress")
    assert done.returncode == 1, done.stdout + done.stderr
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["ok"] is False and result["expectations"][0]["ok"] is False


def _wait_for_children(process, run_dir: Path, names: list[str], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((run_dir / f"{n}.ready.json").exists() for n in names):
            return descendants(process.pid)
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("children never became ready")


def test_sigint_mid_run_stops_every_child_within_5s(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with running_qnet("run", QUICKSTART, "--duration", "30", "--run-dir", str(run_dir),
                      "--no-progress") as process:
        children = _wait_for_children(process, run_dir, ["daemon", "alice", "bob",
                                                         "relay-alice-bob"], 30)
        assert len(children) >= 5  # broker, daemon, two nodes, relay
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        process.communicate(timeout=10)
        assert process.returncode == 130
        left = wait_gone(children, max(0.1, 5 - (time.monotonic() - sent)))
        assert not left, f"children still alive 5 s after SIGINT: {left}"


def test_crashed_node_is_reported_with_its_log_tail_and_nothing_is_left(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with running_qnet("run", QUICKSTART, "--duration", "30", "--run-dir", str(run_dir),
                      "--no-progress") as process:
        children = _wait_for_children(process, run_dir, ["alice", "bob", "relay-alice-bob"], 30)
        bob = json.loads((run_dir / "bob.ready.json").read_text())["pid"]
        time.sleep(1.0)
        os.kill(bob, signal.SIGKILL)
        out, err = process.communicate(timeout=20)
        assert process.returncode == 3, out + err
        assert "bob" in err and "exited unexpectedly" in err
        assert "last lines of" in err and "bob.log" in err.replace("\n", "")
        assert not wait_gone(children, 5)
    result = json.loads((run_dir / "result.json").read_text())  # written all the same
    assert result["ok"] is False and result["failure"]["process"] == "bob"


def test_cut_fault_goes_over_mqtt_and_the_run_recovers(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_qnet("run", QUICKSTART, "--duration", "3", "--run-dir", str(run_dir),
                    "--no-progress", "--set",
                    'faults=[{at_s = 2.0, action = "cut", link = "alice-bob", for_s = 1.5}]')
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((run_dir / "result.json").read_text())
    faults = [e for e in result["events"] if e["kind"] == "fault"]
    assert [f["action"] for f in faults] == ["cut", "restore"]
    assert 1.4 < faults[1]["t_emu"] - faults[0]["t_emu"] < 2.5
    relay_log = (run_dir / "relay-alice-bob.log").read_text()
    assert "cut" in relay_log and "restore" in relay_log
    (qkd,) = result["qkd"]
    # nothing was lost while the link was cut: every detection was sifted in the end
    assert qkd["sifted_bits"] == qkd["sifted_bits_a"] > 0
    # the cut outlasts the source (3 s): sifting can only finish after the restore at 3.5 s
    assert qkd["completion_factor"] < 3.0 / 3.5


def test_children_exit_when_the_orchestrator_is_killed(tmp_path: Path) -> None:
    """Even SIGKILL of qnet (no clean-up possible) leaves no broker, daemon, node or relay
    behind: each child has PR_SET_PDEATHSIG."""
    run_dir = tmp_path / "run"
    with running_qnet("run", QUICKSTART, "--duration", "30", "--run-dir", str(run_dir),
                      "--no-progress") as process:
        children = _wait_for_children(process, run_dir, ["daemon", "alice", "bob",
                                                         "relay-alice-bob"], 30)
        ours = {json.loads((run_dir / f"{n}.ready.json").read_text())["pid"]
                for n in ("daemon", "alice", "bob", "relay-alice-bob")}
        assert ours <= children and len(children) == 5  # and the broker
        process.kill()
        process.communicate(timeout=10)
        try:
            assert not wait_gone(children, 5)
        finally:
            for pid in children:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
