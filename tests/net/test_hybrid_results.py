"""hybrid result fields: the fidelity's standard error is never 0 from finitely many pairs
(Agresti-Coull), and a flow whose path crosses a fibre without ``[links.flight]`` gets no
model and a reason instead of crashing the merge."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from emulator.hybrid_config import NoFlightFibre, flow_mixture
from emulator.scenario import Fault, ScenarioError, parse_scenario
from nodes.apps.hybrid import estimate, results
from nodes.apps.hybrid.estimate import binomial_stderr


def test_binomial_stderr_at_the_agresti_coull_estimate() -> None:
    for k, n in ((100, 100), (0, 100), (37, 100), (1, 1)):
        p = (k + 2) / (n + 4)
        assert binomial_stderr(k, n) == pytest.approx(math.sqrt(p * (1 - p) / (n + 4)))
    assert binomial_stderr(100, 100) == pytest.approx(binomial_stderr(0, 100))  # all, none
    assert binomial_stderr(100, 100) > 0.01
    wald = math.sqrt(0.4 * 0.6 / 10_000)  # mixed and many: the plain binomial error
    assert binomial_stderr(4000, 10_000) == pytest.approx(wald, rel=1e-3)


def test_two_standard_errors_cover_a_share_near_one() -> None:
    """30 trials at p = 0.98 all agree in 55 % of runs: sqrt(p(1-p)/n) then claims 0 and
    misses the truth; the Agresti-Coull error covers it in at least 90 % (nominal 95 %,
    2000 runs: the covered share's own error is ~0.005)."""
    rng = np.random.default_rng(7)
    n, p = 30, 0.98
    k = rng.binomial(n, p, size=2000)
    se = np.array([binomial_stderr(int(x), n) for x in k])
    assert np.mean(np.abs(k / n - p) <= 2 * se) >= 0.9
    assert np.mean(k == n) > 0.4  # the runs where the plain error reads 0


def records(bases: list[int], agree: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Pair records in the same basis at both ends, outcomes equal where ``agree``."""
    seq = np.arange(len(bases))
    a = np.zeros(len(bases), dtype=int)
    b = np.where(agree, a, 1 - a)
    return np.stack([seq, bases, a], 1), np.stack([seq, bases, b], 1)


def test_pair_fidelity_error_when_every_pair_agrees_with_phi_plus() -> None:
    bases = [0] * 20 + [1] * 20 + [2] * 20
    src, dst = records(bases, [True] * 40 + [False] * 20)  # Phi+: Z, X agree, Y opposite
    got = estimate.estimate("pair", src, dst)
    assert got["fidelity_mean"] == 1.0 and got["matched_per_basis"] == [20, 20, 20]
    se = [binomial_stderr(20, 20), binomial_stderr(20, 20), binomial_stderr(0, 20)]
    assert got["fidelity_stderr"] == pytest.approx(math.sqrt(sum(s * s for s in se)) / 2)
    assert got["fidelity_stderr"] > 0.02
    worst = estimate.estimate("pair", *records(bases, [False] * 40 + [True] * 20))
    assert worst["fidelity_mean"] == -0.5  # (1 - 3)/4: the anti-correlated state
    assert worst["fidelity_stderr"] == pytest.approx(got["fidelity_stderr"])


def test_pair_fidelity_error_mixed_and_empty() -> None:
    bases = [0] * 40 + [1] * 40 + [2] * 40
    agree = [i % 4 != 0 for i in range(80)] + [i % 4 == 0 for i in range(40)]
    got = estimate.estimate("pair", *records(bases, agree))
    assert got["fidelity_mean"] == pytest.approx((1 + 0.5 + 0.5 + 0.5) / 4)
    assert got["fidelity_stderr"] == pytest.approx(math.sqrt(3) * binomial_stderr(30, 40) / 2)
    no_y = estimate.estimate("pair", *records([0, 1, 1], [True] * 3))
    assert no_y["fidelity_mean"] is None and no_y["fidelity_stderr"] is None


def state_records(want_agree: list[bool], measured_in_axis: bool = True):
    n = len(want_agree)
    k = np.zeros(n, dtype=int)  # |0>: basis Z, outcome 0
    outcome = np.where(want_agree, 0, 1)
    basis = np.zeros(n, dtype=int) if measured_in_axis else np.ones(n, dtype=int)
    return np.stack([np.arange(n), k, np.zeros(n, int)], 1), np.stack([np.arange(n), basis,
                                                                       outcome], 1)


@pytest.mark.parametrize(("agree", "mean"), [(50, 1.0), (0, 0.0), (35, 0.7)])
def test_state_fidelity_error(agree: int, mean: float) -> None:
    got = estimate.estimate("state", *state_records([True] * agree + [False] * (50 - agree)))
    assert got["matched"] == 50 and got["fidelity_mean"] == pytest.approx(mean)
    assert got["fidelity_stderr"] == pytest.approx(binomial_stderr(agree, 50))
    assert got["fidelity_stderr"] > 0.02


def test_state_fidelity_none_matched() -> None:
    got = estimate.estimate("state", *state_records([True] * 5, measured_in_axis=False))
    assert got == {"matched": 0, "fidelity_mean": None, "fidelity_stderr": None}


FIBRE = {"diffusion_rad2_per_s": 0.2, "estimation_sigma_rad": 0.1}


def scenario(links: list[tuple[str, str, bool]]) -> dict:
    """alice -> bob over ``links`` (a, b, with flight fibre), router r between them."""
    return {"scenario": {"name": "t", "duration_s": 4},
            "nodes": [{"name": "alice", "memory": {"slots": 8}},
                      {"name": "r", "hybrid": {"switch_budget_us": 1000}},
                      {"name": "x"}, {"name": "bob", "memory": {"slots": 8}}],
            "links": [{"a": a, "b": b, "length_km": 1.0, **({"flight": FIBRE} if f else {})}
                      for a, b, f in links],
            "apps": [{"kind": "hybrid.send", "src": "alice", "dst": "bob"}]}


def test_validation_refuses_ends_joined_by_no_flight_fibre() -> None:
    # both ends have a flight fibre, but only the classical a-b link joins the two islands
    raw = scenario([("alice", "r", True), ("x", "bob", True), ("r", "x", False),
                    ("alice", "bob", False)])
    with pytest.raises(ScenarioError, match=r"apps\[0\]\.dst: 'bob' cannot be reached from "
                                            r"'alice' over \[links.flight\] fibres"):
        parse_scenario(raw)
    links = [("alice", "r", True), ("r", "x", True), ("x", "bob", True), ("alice", "bob", False)]
    assert parse_scenario(scenario(links)).apps[0].routers == ["r", "x"]


def test_merge_gives_no_model_to_a_path_over_a_classical_only_link() -> None:
    links = [("alice", "r", True), ("r", "x", True), ("x", "bob", True), ("alice", "bob", False)]
    sc = parse_scenario(scenario(links))
    times = [10.0, 10.5, 11.0]
    src = {"role": "src", "sent": 3, "send_times": times, "path": ["alice", "bob"],
           "paths": [[0, ["alice", "bob"]]]}
    dst = {"role": "dst", "delivered": 0, "lost_in_fibre": 0, "late": 0}
    (out,) = results.merge(sc, sc.apps[0], [src, dst])
    assert out["fidelity_model"] is None and "model" not in out
    assert out["model_note"] == "the path crosses alice-bob, which has no [links.flight]"
    assert out["unseen"] == 3
    with pytest.raises(NoFlightFibre):
        flow_mixture(sc, [(0, ["alice", "r", "bob"])], times, {})
    (fine,) = results.merge(sc, sc.apps[0], [{**src, "paths": [[0, ["alice", "r", "x", "bob"]]]},
                                             dst])
    assert fine["model_note"] is None and 0 < fine["fidelity_model"] <= 1
    for missing, note in (({"paths": None}, "the sender recorded no path"),
                          ({"send_times": []}, "nothing was sent")):
        (out,) = results.merge(sc, sc.apps[0], [{**src, **missing}, dst])
        assert out["fidelity_model"] is None and out["model_note"] == note


def failover_scenario() -> object:
    """alice -> bob over r (1 + 1 km, Raman noise 0.2 on r-bob) or over s (1 + 4 km, none);
    alice-r cut 1 s after the start for 1 s. No drift, no readout error, no late share."""
    clean = {"diffusion_rad2_per_s": 0.0}
    links = [("alice", "r", 1.0, clean), ("r", "bob", 1.0, {"noise_photons": 0.2}),
             ("alice", "s", 1.0, clean), ("s", "bob", 4.0, clean)]
    return parse_scenario({
        "scenario": {"name": "t", "duration_s": 5},
        "nodes": [{"name": "alice", "memory": {"slots": 8}},
                  {"name": "r", "hybrid": {"switch_budget_us": 1000}},
                  {"name": "s", "hybrid": {"switch_budget_us": 1000}},
                  {"name": "bob", "memory": {"slots": 8}}],
        "links": [{"a": a, "b": b, "length_km": km, "flight": f} for a, b, km, f in links],
        "apps": [{"kind": "hybrid.send", "src": "alice", "dst": "bob"}],
        "faults": [{"at_s": 1.0, "action": "cut", "link": "alice-r", "for_s": 1.0}]})


def test_two_path_mixture_by_hand() -> None:
    """301 packets every 10 ms from 10.003 s (apps started at 10 s): 140 on alice-r-bob, the
    sender rerouted at seq 140 (11.403 s) onto alice-s-bob and back at seq 220 (12.203 s).
    Seqs 100..139 entered alice-r while it was cut [11, 12): lost on the cut, a point mass.
    The other 181 on r deliver T_r = 10^-0.04 with lambda = exp(-0.1) (Raman: p = 1 -
    exp(-n/2)); the 80 on s deliver T_s = 10^-0.1 with lambda = 1. Open: 9 packets about the
    cut's start (|t - 11| <= 0.045) and 9 about each reroute; none about its end (no packet
    on r then)."""
    sc = failover_scenario()
    r, s = ["alice", "r", "bob"], ["alice", "s", "bob"]
    times = [10.003 + 0.01 * i for i in range(301)]
    src = {"role": "src", "sent": 301, "send_times": times, "path": r, "t_start": 10.0,
           "paths": [[0, r], [140, s], [220, r]], "path_at_end": r}
    dst = {"role": "dst", "delivered": 200, "lost_in_fibre": 40, "late": 0, "counters": {}}
    cuts = results.cut_windows(sc, 10.0)
    assert [(sorted(c.link), c.start, c.end) for c in cuts] == [(["alice", "r"], 11.0, 12.0)]
    model = flow_mixture(sc, src["paths"], times, {}, cuts, ambiguity_s=0.045)
    t_r, t_s = 10 ** -0.04, 10 ** -0.1
    f_r = (1 + 3 * math.exp(-0.1)) / 4
    assert [(m.sent, m.lost_on_cut, m.ambiguous) for m in model.segments] == \
        [(140, 40, 9 + 4), (80, 0, 5 + 4), (81, 0, 5)]  # each reroute's nine: 4 before, 5 from
    assert model.ambiguous == 27
    assert model.lost_on_cut == pytest.approx(40 / 301)
    assert model.delivered == pytest.approx((181 * t_r + 80 * t_s) / 301)
    assert model.lost_in_fibre == pytest.approx((181 * (1 - t_r) + 80 * (1 - t_s)) / 301)
    assert model.late == 0 and model.late_se == 0
    assert model.delivered_se == pytest.approx(
        math.sqrt(181 * t_r * (1 - t_r) + 80 * t_s * (1 - t_s)) / 301)
    assert model.pair_fidelity == pytest.approx((181 * t_r * f_r + 80 * t_s) /
                                                (181 * t_r + 80 * t_s))
    assert model.delivered + model.lost_in_fibre + model.late + model.lost_on_cut == \
        pytest.approx(1.0)
    (out,) = results.merge(sc, sc.apps[0], [src, dst])  # the same through the merge
    assert out["model"]["lost_on_cut"] == pytest.approx(40 / 301)
    assert out["fidelity_model"] == pytest.approx(model.pair_fidelity)
    assert out["unseen"] == 61 and out["dropped_header"] == 0
    assert [seg["path"] for seg in out["model"]["segments"]] == [r, s, r]


def test_cut_ends_at_a_restore_or_the_run() -> None:
    sc = failover_scenario()
    sc.faults[0].for_s = None
    assert [(c.start, c.end) for c in results.cut_windows(sc, 0.0)] == [(1.0, math.inf)]
    sc.faults.append(msgspec.convert({"at_s": 1.5, "action": "restore", "link": "alice-r"},
                                     Fault))
    assert [(c.start, c.end) for c in results.cut_windows(sc, 0.0)] == [(1.0, 1.5)]


def test_merge_takes_each_flows_own_latencies_at_a_router() -> None:
    """A router's decision latency depends on the flow (its first router hears the header
    after the payload, a later one ahead of it): the model of a flow takes the router's
    samples of that flow, not the node's. r (1 ms budget) decided flow 1 in 0.5 ms 9 times
    and late once, another flow late 3 times in 4; flow 1's late share at r is 0.1 of the
    payloads that reach it (10^-0.2 of those sent: 1 km and no delay line at alice's end),
    whatever the other flow did there."""
    links = [("alice", "r", True), ("r", "bob", True)]
    sc = parse_scenario(scenario(links))
    app = sc.apps[0]
    times = [10.0 + 0.01 * i for i in range(20)]
    src = {"role": "src", "sent": 20, "send_times": times, "path": ["alice", "r", "bob"],
           "paths": [[0, ["alice", "r", "bob"]]], "t_start": 10.0}
    dst = {"role": "dst", "delivered": 15, "lost_in_fibre": 3, "late": 2, "counters": {}}
    mine, theirs = [500.0] * 9 + [2000.0], [3000.0] * 3 + [500.0]
    router = {"section": "router", "node": "r", "decision_us": mine + theirs,
              "decision_us_by_flow": {str(app.flow): mine, str(app.flow + 1): theirs},
              "counters": {}}
    (out,) = results.merge(sc, app, [src, dst, router])
    assert out["model"]["late"] == pytest.approx(0.1 * 10 ** (-0.2 / 10), rel=1e-9)
    node_wide = flow_mixture(sc, src["paths"], times, {"r": mine + theirs})
    assert node_wide.late == pytest.approx(4 / 14 * 10 ** (-0.2 / 10), rel=1e-9)
    (none,) = results.merge(sc, app, [src, dst, {**router, "decision_us_by_flow": {}}])
    assert none["model"]["late"] == 0  # no decision of this flow at r: none late
