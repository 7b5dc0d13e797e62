"""End to end through ``qnet run``: hybrid packets over qchip-campus's three routers, with and
without drift compensation — delivered fraction and fidelity within 4 standard errors of the
orchestrator's model (binomial over the counts, plus the model's run-to-run spread), the
routers never measured, F >= 0.97 with compensation — and a 2 ms switch budget, within the
routers' decision latency, which loses packets as late at time_scale 1 and none at 0.05 (40
ms of wall time, the issue's setting); and quanet-failover, whose flow moves to the backup path and back, within
the mixture of its paths' models. The sender and the routers are CPU-bound: the campus and
failover runs are at time_scale 0.5 (the same emulated physics in twice the wall time)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hybrid_model import check_flow, segments
from qnet_process import HAVE_MOSQUITTO, ROOT, left_behind, run_qnet, wait_gone

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(200)]
SCENARIO = ROOT / "scenarios/qchip-campus.toml"
ROUTERS = (1, 2, 3)  # ra, core, rb in the scenario's [[nodes]]
NO_COMPENSATION = [f"nodes.{i}.hybrid.compensate=false" for i in (*ROUTERS, 4)]
# at time_scale 1 and load 9 the sender managed 80-102 packets of 500 and the routers'
# median decision took 14-20 ms of the 20 ms budget; twice the wall time doubles the packets
SLOW_MOTION = "scenario.time_scale=0.5"


def run(tmp_path: Path, *overrides: str) -> dict:
    out, run_dir = tmp_path / "r.json", tmp_path / "run"
    options = [x for o in overrides for x in ("--set", o)]
    done = run_qnet("run", str(SCENARIO), "--run-dir", str(run_dir), "--json", str(out),
                    "--no-progress", *options, timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not wait_gone(left_behind(run_dir), 5)
    (flow,) = json.loads(out.read_text())["hybrid"]
    return flow


def check_model(flow: dict) -> None:
    """Every count adds up; delivered and fidelity within 4 SE of the model."""
    sent = flow["sent"]
    assert sent >= 60, flow  # ~500 on a quiet machine, far fewer under load
    assert flow["router_measurements"] == 0
    assert flow["delivered"] + flow["lost_in_fibre"] + flow["late"] + flow["unseen"] == sent
    assert flow["unseen"] == 0 and flow["dropped_header"] == 0
    p = flow["model"]["delivered"]
    assert abs(flow["delivered"] / sent - p) < 4 * math.sqrt(p * (1 - p) / sent), flow
    # binomial SE at the model (the estimate's own is 0 when every match agreed): each basis
    # correlator is +-lambda, lambda = (4 F - 1)/3, Var = (1 - lambda^2)/n_b; F = (1 + sum)/4
    lam = (4 * flow["fidelity_model"] - 1) / 3
    binomial = math.sqrt(sum((1 - lam**2) / n for n in flow["matched_per_basis"])) / 4
    se = math.hypot(binomial, flow["fidelity_model_spread"])
    assert abs(flow["fidelity_mean"] - flow["fidelity_model"]) < 4 * se, flow
    assert flow["fidelity_mean"] == flow["fidelity_mean_src"]  # both ends, same records


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="needs mosquitto")
def test_campus_with_and_without_compensation(tmp_path: Path) -> None:
    on = run(tmp_path / "on", SLOW_MOTION)
    check_model(on)
    assert on["path"] == ["alice", "ra", "core", "rb", "bob"]
    assert on["fidelity_model"] >= 0.97  # Q-Chip: 0.97 (late ones are in the model)
    off = run(tmp_path / "off", SLOW_MOTION, *NO_COMPENSATION)
    check_model(off)
    assert off["fidelity_model"] < on["fidelity_model"] - 0.05  # the drift is visible


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="needs mosquitto")
def test_budget_below_decision_latency_loses_late(tmp_path: Path) -> None:
    budget = [f"nodes.{i}.hybrid.switch_budget_us=2000" for i in ROUTERS]
    fast = run(tmp_path / "fast", *budget, "scenario.duration_s=2.5")
    assert fast["late"] > 0, fast  # Python's decisions take 1-10 ms here
    assert fast["delivered"] + fast["lost_in_fibre"] + fast["late"] == fast["sent"]
    # the late share is what the routers' own latency samples predict (4 binomial SE, + 1):
    # each sample is the interval the daemon judged, PayloadArrived.t to Switched.t (or to
    # the refusal's Error.t when late)
    q, n = fast["model"]["late"], fast["sent"]
    assert abs(fast["late"] - q * n) <= 4 * math.sqrt(q * (1 - q) * n) + 1, fast
    # 20x the wall time per emulated us (40 ms): the same routers decide within the budget.
    # (Beside a load of 9 on 2 cores, preempted routers had 24 of 239 late; 0.02 gave 0 of
    # 161. The issue asks for 0.05, and at CI's load it has always held.)
    slow = run(tmp_path / "slow", *budget, "scenario.time_scale=0.05",
               "scenario.duration_s=1.2", "routing.hello_interval_s=0.01",
               "routing.dead_interval_s=0.04", "apps.0.start_s=0.2",
               "apps.0.stop_before_end_s=0.4", "apps.0.rate_hz=400")
    assert slow["sent"] > 50 and slow["late"] == 0, slow
    assert slow["delivered"] > 0 and slow["router_measurements"] == 0


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="needs mosquitto")
def test_failover_hybrid_packets_resume_on_the_backup(tmp_path: Path) -> None:
    """quanet-failover: the primary a-p cut at 3 s for 2 s; the sender's route goes p, then
    q1-q2 while it is cut, then p again; packets reach b over both; the flow is within its
    model, the mixture of the two paths' models by the packets sent on each, less those sent
    into the cut link before the sender's reroute (lost with it); no router measured any."""
    out, run_dir = tmp_path / "r.json", tmp_path / "run"
    # slow motion: at time_scale 1 and load 9 the backup carried 45 packets, 6 delivered (the
    # routers' median decision 18-23 ms of the 20 ms budget): a slower machine delivers none
    done = run_qnet("run", str(ROOT / "scenarios/quanet-failover.toml"), "--run-dir",
                    str(run_dir), "--json", str(out), "--no-progress", "--set", SLOW_MOTION,
                    timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not wait_gone(left_behind(run_dir), 5)
    (flow,) = json.loads(out.read_text())["hybrid"]
    primary, backup = ["a", "p", "b"], ["a", "q1", "q2", "b"]
    assert segments(flow) == [primary, backup, primary], flow  # and back after the restore
    assert flow["path"] == flow["path_at_end"] == primary
    by_link = flow["delivered_by_link"]
    assert by_link.get("p-b", 0) > 0 and by_link.get("q2-b", 0) > 0, flow
    # up to the dead interval (0.4 s, ~40 packets) went into the cut a-p before the reroute
    assert [seg["lost_on_cut"] > 0 for seg in flow["model"]["segments"]] == \
        [True, False, False], flow
    check_flow(flow)
