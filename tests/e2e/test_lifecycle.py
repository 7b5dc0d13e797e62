"""End to end: how a run ends. SIGINT at random times, ``kill -9`` of qnet, a node killed
mid-run, a reused run folder, slow motion, unwritable results, verbatim error messages.

"Nothing of the run left alive" is checked by scanning /proc for any process whose command
line names the run folder (every child's argv does: its config, or the broker's config file),
so children started after a snapshot are caught too.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import time
from pathlib import Path

import pytest
import trio
from qnet_process import ROOT, alive, run_qnet, running_qnet, start_qnet, wait_gone

from emulator import telemetry
from emulator.child_config import MqttAddress

QUICKSTART = str(ROOT / "scenarios" / "quickstart.toml")

pytestmark = pytest.mark.e2e


def run_processes(run_dir: Path) -> set[int]:
    """Live processes whose command line mentions ``run_dir``."""
    needle = str(run_dir).encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def assert_nothing_left(run_dir: Path, timeout: float = 5.0) -> None:
    left = wait_gone(run_processes(run_dir), timeout)
    assert not left, f"processes of {run_dir} still alive: {left}"


def tracebacks(run_dir: Path) -> list[str]:
    return [log.name for log in run_dir.glob("*.log") if "Traceback" in log.read_text()]


def wait_ready(process, run_dir: Path, names: list[str], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((run_dir / f"{n}.ready.json").exists() for n in names):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{names} never became ready")


def wait_for_keys(run_dir: Path, nodes: set[str], timeout: float = 90.0) -> None:
    """Until each of ``nodes`` has announced a key block (``key_produced`` on its events topic,
    read with the run's observer login as mosquitto_sub would)."""
    login = json.loads((run_dir / "mqtt-observer.json").read_text())
    address = MqttAddress(login["host"], login["port"], login["username"], login["password"])

    async def watch() -> None:
        waiting = set(nodes)
        with trio.fail_after(timeout):
            async with telemetry.connect(address, f"lifecycle-test-{os.getpid()}") as mqtt:
                await mqtt.subscribe("qnet/+/node/+/events", qos=1)
                async for message in mqtt.messages():
                    event = json.loads(message.payload)
                    if event.get("kind") == "key_produced":
                        waiting.discard(event.get("node"))
                        if not waiting:
                            return

    trio.run(watch)


def test_twenty_sigints_at_random_times_exit_130_quietly(tmp_path: Path) -> None:
    """SIGINT anywhere from broker start-up to the middle of the run: exit 130, no child
    traceback, nothing left. Four runs at a time keep the total well under two minutes.

    Each delay counts from the moment qnet made its run folder (before the broker starts),
    not from the process's start: on a loaded machine a SIGINT 0.64 s after the start came
    while Python was still importing ``site``, before any of qnet's code (exit 1)."""
    rng = random.Random(20)
    delays = [rng.uniform(0.0, 3.75) for _ in range(20)]
    for batch in range(0, 20, 4):
        runs = []
        for i in range(batch, batch + 4):
            run_dir = tmp_path / f"run{i}"
            process = start_qnet("run", QUICKSTART, "--duration", "8", "--run-dir",
                                 str(run_dir), "--no-progress")
            runs.append((process, run_dir, delays[i]))
        try:
            deadline, pending, made = time.monotonic() + 60, list(runs), {}
            while pending:
                assert time.monotonic() < deadline, "a run folder was not made in time"
                for run in list(pending):
                    process, run_dir, delay = run
                    if run_dir not in made and run_dir.exists():
                        made[run_dir] = time.monotonic()
                    if run_dir in made and time.monotonic() >= made[run_dir] + delay:
                        process.send_signal(signal.SIGINT)
                        pending.remove(run)
                time.sleep(0.01)
            for process, run_dir, _ in runs:
                out, err = process.communicate(timeout=30)
                assert process.returncode == 130, (run_dir, out, err)
                assert "Traceback" not in err
        finally:
            for process, _, _ in runs:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
        for _, run_dir, _ in runs:
            assert_nothing_left(run_dir)
            assert not tracebacks(run_dir), f"traceback in {run_dir}: {tracebacks(run_dir)}"


def test_kill_9_of_qnet_leaves_no_process_of_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with running_qnet("run", QUICKSTART, "--duration", "30", "--run-dir", str(run_dir),
                      "--no-progress") as process:
        wait_ready(process, run_dir, ["daemon", "alice", "bob", "relay-alice-bob"])
        before = run_processes(run_dir) - {process.pid}
        assert len(before) == 5  # broker, daemon, alice, bob, relay
        process.kill()
        process.communicate(timeout=10)
        assert_nothing_left(run_dir)


def kill_bob_mid_run(tmp_path: Path) -> tuple[int, str, Path]:
    """A quickstart-like run with keys (decoys, post-processing); bob SIGKILLed once both ends
    announced a key block (a fixed 6 s after the nodes were ready left a loaded machine 2.6 s
    past alice's first key: it came 3.2 s after the start)."""
    scenario = tmp_path / "keys.toml"
    scenario.write_text(TWO_PAIRS.format(nodes='[[nodes]]\nname = "alice"\n'
                                               '[[nodes]]\nname = "bob"\n',
                                         links=PAIR.format(a="alice", b="bob")))
    run_dir = tmp_path / "run"
    with running_qnet("run", str(scenario), "--run-dir", str(run_dir),
                      "--no-progress") as process:
        wait_ready(process, run_dir, ["alice", "bob", "relay-alice-bob"])
        bob = json.loads((run_dir / "bob.ready.json").read_text())["pid"]
        wait_for_keys(run_dir, {"alice", "bob"})
        signal_sent = time.monotonic()
        os.kill(bob, signal.SIGKILL)
        out, err = process.communicate(timeout=30)
        assert time.monotonic() - signal_sent < 15.0
    return process.returncode, out + err, run_dir


def test_a_node_killed_mid_run_still_leaves_a_result(tmp_path: Path) -> None:
    code, output, run_dir = kill_bob_mid_run(tmp_path)
    assert code == 3, output
    assert "bob" in output and "exited unexpectedly with code -9" in output
    assert "Traceback" not in output
    result = json.loads((run_dir / "result.json").read_text())
    assert result["ok"] is False
    failure = result["failure"]
    assert failure["process"] == "bob" and failure["exit_code"] == -9 and failure["log_tail"]
    exit_codes = {p["name"]: p["exit_code"] for p in result["processes"]}
    assert exit_codes["bob"] == -9
    assert {exit_codes[n] for n in ("broker", "daemon", "relay-alice-bob")} == {0}
    assert_nothing_left(run_dir)


def test_the_surviving_end_reports_its_keys_when_its_peer_dies(tmp_path: Path) -> None:
    """Needs the apps to end, not crash, when the peer's channel closes (the abort then
    finds alice alive and she publishes the keys she had)."""
    code, output, run_dir = kill_bob_mid_run(tmp_path)
    assert code == 3, output
    result = json.loads((run_dir / "result.json").read_text())
    assert {p["name"]: p["exit_code"] for p in result["processes"]}["alice"] == 0
    alice = result["nodes"]["alice"]
    assert alice["partial"] is True
    assert any(secret_bits(entry) > 0 for entry in alice["apps"]), alice["apps"]
    assert not tracebacks(run_dir)


def secret_bits(entry: dict) -> int:
    return entry.get("secret_bits") or entry.get("secret_bits_a") or 0


TWO_PAIRS = """
[scenario]
name = "two-pairs"
duration_s = 30
seed = 3
{nodes}
{links}
"""
PAIR = """
[[links]]
a = "{a}"
b = "{b}"
length_km = 10
[links.quantum.source]
rate_hz = 5e7
mu = 0.5
decoys = [0.1, 0.0]
probabilities = [0.8, 0.1, 0.1]
[links.quantum.detector]
efficiency = 0.1
dark_count_probability = 1e-6
misalignment = 0.015

[[apps]]
kind = "qkd.bb84"
a = "{a}"
b = "{b}"
block_bits = 100000
cascade = "original"
"""


def test_an_abort_collects_the_partial_keys_of_the_other_pair(tmp_path: Path) -> None:
    """bob dies; carol and dave (another link) are told to abort and publish the keys they
    had produced (``node.partial``), which result.json keeps next to the failure."""
    scenario = tmp_path / "two-pairs.toml"
    scenario.write_text(TWO_PAIRS.format(
        nodes="".join(f'[[nodes]]\nname = "{n}"\n' for n in ("alice", "bob", "carol", "dave")),
        links=PAIR.format(a="alice", b="bob") + PAIR.format(a="carol", b="dave")))
    run_dir = tmp_path / "run"
    with running_qnet("run", str(scenario), "--run-dir", str(run_dir),
                      "--no-progress") as process:
        wait_ready(process, run_dir, ["alice", "bob", "carol", "dave", "relay-carol-dave"])
        bob = json.loads((run_dir / "bob.ready.json").read_text())["pid"]
        # key blocks delivered on both links (a fixed 8 s left a loaded machine 1.4 s past
        # the later link's first key, 6.4 s after the start)
        wait_for_keys(run_dir, {"alice", "bob", "carol", "dave"})
        os.kill(bob, signal.SIGKILL)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 3, out + err
    result = json.loads((run_dir / "result.json").read_text())
    assert result["ok"] is False and result["failure"]["process"] == "bob"
    for name in ("carol", "dave"):
        report = result["nodes"][name]
        assert report["partial"] is True, report
        assert any(secret_bits(entry) > 0 for entry in report["apps"]), report
    assert {p["name"]: p["exit_code"] for p in result["processes"]}["daemon"] == 0
    assert_nothing_left(run_dir)


def test_a_run_folder_can_be_reused_and_is_private(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    pids = []
    for _ in range(2):
        done = run_qnet("run", QUICKSTART, "--duration", "2", "--run-dir", str(run_dir),
                        "--no-progress")
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads((run_dir / "result.json").read_text())
        processes = {p["name"]: p for p in result["processes"]}
        pids.append({name: p["pid"] for name, p in processes.items()})
        # every child ended on our SIGTERM or on control/stop with exit code 0
        assert {name: p["exit_code"] for name, p in processes.items()} == dict.fromkeys(
            processes, 0)
    assert pids[0]["alice"] != pids[1]["alice"]
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    for config in run_dir.glob("*.config.json"):
        assert stat.S_IMODE(config.stat().st_mode) == 0o600, config
    assert not tracebacks(run_dir)


def test_slow_motion_run_exits_0(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_qnet("run", QUICKSTART, "--time-scale", "0.05", "--duration", "0.2",
                    "--run-dir", str(run_dir), "--no-progress", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((run_dir / "result.json").read_text())
    assert result["time_scale"] == 0.05
    assert result["wall_s"] > 0.2 / 0.05  # the emulated 0.2 s took 4 wall seconds at least


@pytest.mark.parametrize("where", ["missing folder", "full disk"])
def test_unwritable_json_path_exits_3_with_one_line(tmp_path: Path, where: str) -> None:
    run_dir = tmp_path / "run"
    target = tmp_path / "missing-dir" / "result.json" if where == "missing folder" else \
        Path("/dev/full")  # every write: ENOSPC
    done = run_qnet("run", QUICKSTART, "--duration", "1", "--run-dir", str(run_dir),
                    "--no-progress", "--json", str(target))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "cannot write the results" in done.stderr and str(target) in done.stderr
    assert (run_dir / "result.json").exists()  # the run folder keeps what could be written


def test_error_messages_are_printed_verbatim(tmp_path: Path) -> None:
    done = run_qnet("run", QUICKSTART, "--broker", "[nu, 0.0]", "--run-dir",
                    str(tmp_path / "run"))
    assert done.returncode == 2
    assert "'[nu, 0.0]'" in done.stderr
    assert not (tmp_path / "run").exists()
