"""hybrid result fields: the fidelity's standard error is never 0 from finitely many pairs
(Agresti-Coull), and a flow whose path crosses a fibre without ``[links.flight]`` gets no
model and a reason instead of crashing the merge."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.hybrid_config import NoFlightFibre, flow_prediction
from emulator.scenario import ScenarioError, parse_scenario
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
    src = {"role": "src", "sent": 3, "send_times": times, "path": ["alice", "bob"]}
    dst = {"role": "dst", "delivered": 0, "lost_in_fibre": 0, "late": 0}
    (out,) = results.merge(sc, sc.apps[0], [src, dst])
    assert out["fidelity_model"] is None and "model" not in out
    assert out["model_note"] == "the path crosses alice-bob, which has no [links.flight]"
    assert out["dropped_header"] == 3
    with pytest.raises(NoFlightFibre):
        flow_prediction(sc, ["alice", "r", "bob"], times, {})
    (fine,) = results.merge(sc, sc.apps[0], [{**src, "path": ["alice", "r", "x", "bob"]}, dst])
    assert fine["model_note"] is None and 0 < fine["fidelity_model"] <= 1
    for missing, note in (({"path": None}, "the sender recorded no path"),
                          ({"send_times": []}, "nothing was sent")):
        (out,) = results.merge(sc, sc.apps[0], [{**src, **missing}, dst])
        assert out["fidelity_model"] is None and out["model_note"] == note
