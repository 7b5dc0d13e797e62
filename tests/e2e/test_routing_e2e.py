"""End to end through ``qnet run``: a classical stream over the routed plane survives a cut of
its primary path (rerouted, and back after the restore) and a crash of the primary's router
(it restarts and rejoins): nothing lost, nothing duplicated, the longest delivery gap within
detection + convergence (reported in result.json ``routing``) + the backup path's delivery."""

from __future__ import annotations

import json

import pytest
from qnet_process import ROOT, left_behind, run_qnet, wait_gone

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]
SCENARIO = ROOT / "scenarios/quanet-failover.toml"
HOP_DELAY_MS = 2.0  # every link's classical delay in the scenario
BACKUP_HOPS = 3  # a - q1 - q2 - b
# Delivery on the backup after the routes changed: its one-way delay, a message interval
# (200 Hz), and Python's forwarding per hop on a loaded 2-core machine (measured 1-3 ms).
PER_HOP_PROCESSING_MS = 5.0


def run(tmp_path, text: str, *options: str) -> dict:
    scenario, out, run_dir = tmp_path / "scenario.toml", tmp_path / "r.json", tmp_path / "run"
    scenario.write_text(text)
    done = run_qnet("run", str(scenario), "--run-dir", str(run_dir), "--json", str(out),
                    "--no-progress", *options, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not wait_gone(left_behind(run_dir), 5)
    return json.loads(out.read_text())


def check_stream(result: dict) -> dict:
    (stream,) = result["streams"]
    assert stream["sent"] > 500 and stream["delivered"] == stream["sent"]
    assert stream["lost"] == 0 and stream["duplicates"] == 0 and stream["out_of_order"] == 0
    assert stream["all_acked"] and stream["reroutes"] >= 2  # away and back
    assert stream["path"] == stream["path_at_end"] == "a-p-b"
    return stream


def gap_bound_ms(fault: dict) -> float:
    return (fault["detection_ms"] + fault["convergence_ms"] + BACKUP_HOPS * HOP_DELAY_MS
            + 1e3 / 200 + (BACKUP_HOPS + 1) * PER_HOP_PROCESSING_MS)


def test_cut_primary_reroutes_without_loss_and_back(tmp_path) -> None:
    result = run(tmp_path, SCENARIO.read_text())
    assert result["ok"], result["expectations"]
    stream = check_stream(result)
    routing = result["routing"]
    cut, restore = routing["faults"]
    assert (cut["action"], cut["target"], restore["action"]) == ("cut", "a-p", "restore")
    dead_ms = 1e3 * routing["dead_interval_s"]
    # a silent cut is found when the dead interval runs out after the last hello heard
    assert dead_ms - 1e3 * routing["hello_interval_s"] - 50 <= cut["detection_ms"] <= dead_ms + 100
    assert restore["detection_ms"] <= 1e3 * routing["hello_interval_s"] + 100
    assert routing["reroutes"] >= 2 and routing["convergence_ms_max"] < 200
    assert stream["max_gap_ms"] <= gap_bound_ms(cut), (stream, routing)


def test_crashed_router_restarts_and_rejoins(tmp_path) -> None:
    text = SCENARIO.read_text()
    faults = text[text.index("[[faults]]"):text.index("[[expect]]")]
    crash = '[[faults]]\nat_s = 3\naction = "crash"\nnode = "p"\nrestart_after_s = 0.5\n\n'
    # the stream ends 1.5 s before the run: 8 s after p's restart to start it and route back
    # through it (p took 3.8 s from its restart to ready on a quiet 2-core machine)
    result = run(tmp_path, text.replace(faults, crash).replace("duration_s = 8",
                                                                "duration_s = 13"))
    assert result["ok"], result["expectations"]
    stream = check_stream(result)  # the stream went round p, and back through p once it rejoined
    crashed, restarted = result["routing"]["faults"]
    assert (crashed["action"], restarted["action"]) == ("crash", "restart")
    assert crashed["detection_ms"] <= 1e3 * result["routing"]["dead_interval_s"] + 100
    assert restarted["detection_ms"] is not None and restarted["convergence_ms"] is not None
    assert stream["max_gap_ms"] <= gap_bound_ms(crashed), (stream, result["routing"])
    p = next(x for x in result["processes"] if x["name"] == "p")
    assert p["counters"]["net.lsa_originated"] >= 1  # the restarted p reported its routing


def test_rtt_metric_measured_from_hellos_avoids_the_slow_short_path(tmp_path) -> None:
    # a-p is 20 ms each way: by length a-p-b (2 km) wins, by the RTT the hellos measure
    # (2 x 22 ms vs 3 x 4 ms) the backup a-q1-q2-b does
    text = SCENARIO.read_text()
    faults = text[text.index("[[faults]]"):text.index("[[expect]]")]
    text = text.replace(faults, "").replace("duration_s = 8", "duration_s = 5")
    text = text.replace('metric = "length_km"', 'metric = "rtt"')
    text = text.replace('b = "p"\nlength_km = 1\nclassical = { delay_ms = 2 }',
                        'b = "p"\nlength_km = 1\nclassical = { delay_ms = 20 }')
    # the stream starts at 1 s: a's route to b settled 0.5 s after the start on a quiet
    # machine (the first RTT samples move the metric), later on a loaded one
    result = run(tmp_path, text, "--set", "apps.0.start_s=1.0")
    assert result["ok"], result["expectations"]
    (stream,) = result["streams"]
    assert stream["path_at_end"] == "a-q1-q2-b"
    assert stream["delivered"] == stream["sent"] > 300
    assert stream["latency_ms_median"] < 20  # not over a-p's 20 ms
