"""hybrid.send off the wire: its scenario checks, the fidelity estimators on sampled records
(within 4 of their own standard errors of the truth), and the merge's model of the path."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.hybrid_config import daemon_counts, flow_mixture, note_unmodelled_faults
from emulator.scenario import ScenarioError, parse_scenario
from nodes.apps.hybrid import estimate, results

FIBRE = {"diffusion_rad2_per_s": 0.2, "estimation_sigma_rad": 0.1}


def raw(dst_budget: float = 0.0, src_fibre: bool = True) -> dict:
    links = [{"a": "r", "b": "bob", "length_km": 1.0, "flight": FIBRE}]
    links.append({"a": "alice", "b": "r", "length_km": 1.0,
                  **({"flight": FIBRE} if src_fibre else {})})
    return {"scenario": {"name": "t", "duration_s": 4},
            "nodes": [{"name": "alice", "memory": {"slots": 8}},
                      {"name": "r", "hybrid": {"switch_budget_us": 1000}},
                      {"name": "bob", "hybrid": {"switch_budget_us": dst_budget}}],
            "links": links,
            "apps": [{"kind": "hybrid.send", "src": "alice", "dst": "bob"}]}


def test_validation_fills_routers_and_refuses_ends_without_fibre() -> None:
    sc = parse_scenario(raw())
    app = sc.apps[0]
    assert app.routers == ["r"] and app.flow == 1 and app.port == 2000
    assert parse_scenario(raw(dst_budget=5.0)).apps[0].routers == ["r"]  # it stores from it
    with pytest.raises(ScenarioError, match=r"apps\[0\]\.src: 'alice' has no \[links.flight\]"):
        parse_scenario(raw(src_fibre=False))


def sample_pairs(lam: float, n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Records of n Werner-like pairs (correlators +lam, +lam, -lam in Z, X, Y), random bases."""
    seq = np.arange(n)
    bs, bd = rng.integers(3, size=n), rng.integers(3, size=n)
    a = rng.integers(2, size=n)
    sign = np.array(estimate.PHI_PLUS_SIGN)[bs]
    agree = rng.random(n) < (1 + sign * lam) / 2
    b = np.where(bs == bd, np.where(agree, a, 1 - a), rng.integers(2, size=n))
    return np.stack([seq, bs, a], 1), np.stack([seq, bd, b], 1)


def test_pair_estimator_is_unbiased_within_its_standard_error() -> None:
    rng = np.random.default_rng(2)
    lam = 0.9
    src, dst = sample_pairs(lam, 30_000, rng)
    got = estimate.estimate("pair", src[::-1], dst)  # order does not matter: joined by seq
    assert got["matched"] == sum(got["matched_per_basis"])
    assert abs(got["matched"] / 30_000 - 1 / 3) < 4 * math.sqrt(2 / 9 / 30_000)
    assert abs(got["fidelity_mean"] - (1 + 3 * lam) / 4) < 4 * got["fidelity_stderr"]


def test_state_estimator() -> None:
    rng = np.random.default_rng(3)
    n, f = 20_000, 0.93
    k = rng.integers(6, size=n)
    basis = rng.integers(3, size=n)
    want = np.array([s[2] for s in estimate.STATES])[k]
    outcome = np.where(rng.random(n) < f, want, 1 - want)
    src = np.stack([np.arange(n), k, np.zeros(n, int)], 1)
    dst = np.stack([np.arange(n), basis, outcome], 1)
    got = estimate.estimate("state", src, dst)
    assert abs(got["fidelity_mean"] - f) < 4 * got["fidelity_stderr"]


def test_merge_models_the_path_and_counts() -> None:
    sc = parse_scenario(raw())
    app = sc.apps[0]
    times = list(np.linspace(10.0, 12.0, 50))
    entries = [
        {"role": "src", "sent": 50, "path": ["alice", "r", "bob"], "send_times": times,
         "paths": [[0, ["alice", "r", "bob"]]], "path_at_end": ["alice", "r", "bob"],
         "fidelity_mean": 0.9, "t_start": 9.0},
        {"role": "dst", "delivered": 40, "lost_in_fibre": 6, "late": 1, "fidelity_mean": 0.9,
         "fidelity_stderr": 0.02, "matched_per_basis": [5, 5, 5],
         "counters": {"dropped_bad_mac": 1}},
        {"section": "router", "node": "r", "decision_us": [500.0] * 9 + [2000.0],
         "decision_us_by_flow": {str(app.flow): [500.0] * 9 + [2000.0]},
         "counters": {"hybrid_switched": 45, "hybrid_late": 1, "dropped_no_route": 1}}]
    (out,) = results.merge(sc, app, entries)
    # the ends' remainder, and the drops the nodes on the path counted
    assert out["unseen"] == 3 and out["dropped_header"] == 2
    assert out["router_measurements"] is None
    model = flow_mixture(sc, [(0, ["alice", "r", "bob"])], times,
                         {"r": [500.0] * 9 + [2000.0]})
    assert out["fidelity_model"] == pytest.approx(model.pair_fidelity)
    assert out["model"]["lost_on_cut"] == 0 and out["model"]["ambiguous"] == 0
    assert out["model"]["late"] == pytest.approx(0.1 * 10 ** (-0.2 / 10), rel=1e-9)
    assert out["routers"] == [{"node": "r", "switches": 45, "late": 1, "over_budget": 1,
                               "decision_us_median": 500.0}]
    sections = {"hybrid": [out]}
    daemon_counts(sections, {"measurements": {"alice": 50, "bob": 40}})
    assert out["router_measurements"] == 0
    daemon_counts(sections, {"measurements": {"r": 2}})
    assert out["router_measurements"] == 2


def test_router_measurements_leave_out_what_another_flow_s_end_measured() -> None:
    """Flow 1 rerouted through r31, which sends flow 2 (it measures its kept halves: one per
    packet) and through r02, flow 2's destination (one per delivered payload)."""
    one = {"src": "r13", "dst": "r30", "payload": "pair", "sent": 100, "delivered": 30,
           "paths": [[0, ["r13", "r22", "r30"]], [40, ["r13", "r31", "r02", "r30"]]],
           "path_at_end": ["r13", "r22", "r30"]}
    two = {"src": "r31", "dst": "r02", "payload": "pair", "sent": 80, "delivered": 25,
           "paths": [[0, ["r31", "r22", "r02"]]], "path_at_end": ["r31", "r22", "r02"]}
    sections = {"hybrid": [one, two]}
    daemon_counts(sections, {"measurements": {"r13": 100, "r30": 30, "r31": 80, "r02": 25}})
    assert one["router_measurements"] == 0 and two["router_measurements"] == 0
    daemon_counts(sections, {"measurements": {"r31": 81, "r02": 25, "r22": 1}})
    assert one["router_measurements"] == 2 and two["router_measurements"] == 1


def test_faults_the_model_leaves_out_are_named() -> None:
    flow = {"paths": [[0, ["a", "p", "b"]], [9, ["a", "q", "b"]]], "fidelity_model": 0.9,
            "model_note": None}
    log = [{"action": "cut", "target": "a-p", "at_s": 3.0, "source": "scenario"},
           {"action": "restore", "target": "a-p", "at_s": 5.0, "source": "scenario"},
           {"action": "cut", "target": "x-y", "at_s": 1.0, "source": "qnet fault"},
           {"action": "degrade", "target": "b-q", "at_s": 4.0, "source": "scenario"},
           {"action": "crash", "target": "p", "at_s": 6.0, "source": "qnet fault"}]
    note_unmodelled_faults({"hybrid": [flow]}, log[:3])
    assert flow["model_note"] is None  # scheduled cuts are modelled; x-y is off its paths
    note_unmodelled_faults({"hybrid": [flow]}, log)
    assert flow["model_note"] == ("not in the model: degrade b-q at 4.000 s (scenario); "
                                  "crash p at 6.000 s (qnet fault)")
