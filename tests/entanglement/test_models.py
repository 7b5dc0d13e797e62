"""The orchestrator's predictions from what the nodes reported: Werner chain of the path's
source fidelities, each sampled pair dephased by its own storage times over each node's T2
(the scenario's), the teleport Haar average (2F + 1)/3; nodes never compute these."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from emulator.physics import bell_diagonal as bd
from emulator.physics.purification import rounds
from emulator.scenario import load_scenario
from nodes.entanglement.pairs import model as pairs_model
from nodes.entanglement.pairs import results as pairs_results
from nodes.entanglement.teleport import model as teleport_model

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def test_pairs_model_is_the_dephased_werner_chain_of_the_reported_storage_times() -> None:
    sc = load_scenario(SCENARIOS / "repeater-chain.toml",
                       ["nodes.0.memory.t2_s=0.5", "nodes.4.memory.t2_s=2.0"])
    (app,) = sc.apps
    nodes = [app.a, *app.path, app.b]
    sample = [[0.1, 0.0, 0.2, 0.0, 0.4], [0.0, 0.0, 0.0, 0.0, 0.0]]
    entry = {"pairs": 2, "storage_s": {"nodes": nodes, "pairs": 2, "sample": sample}}
    got = pairs_model.predict(sc, app, entry)
    f = 0.99
    for _ in range(3):  # four links of 0.99 swapped: F <- F F' + (1-F)(1-F')/3
        f = f * 0.99 + (1 - f) * 0.01 / 3
    assert got["fidelity_link_chain"] == pytest.approx(f, abs=1e-12)
    decay = 0.1 / 0.5 + 0.2 / 1.0 + 0.4 / 2.0  # alice T2 0.5, r2 T2 1.0, bob T2 2.0
    dephased = f - (1 - math.exp(-decay)) / 2 * (f - (1 - f) / 3)
    assert got["fidelity_model"] == pytest.approx((dephased + f) / 2, abs=1e-12)
    merged = pairs_results.merge(sc, app, [{**entry, "role": "report", "name": "alice-bob"},
                                           {"role": "a_end", "measured_a": 2}])
    assert merged[0]["fidelity_model"] == got["fidelity_model"]
    assert merged[0]["measured_a"] == 2


def test_pairs_model_without_samples_is_none_and_purification_uses_the_recurrence() -> None:
    sc = load_scenario(SCENARIOS / "repeater-chain.toml")
    (app,) = sc.apps
    assert pairs_model.predict(sc, app, {"pairs": 0})["fidelity_model"] is None
    sc = load_scenario(SCENARIOS / "repeater-chain.toml",
                       ["apps.0.purification=dejmps", "apps.0.purification_rounds=1"])
    f_chain = pairs_model.predict(sc, sc.apps[0], {"pairs": 5})["fidelity_link_chain"]
    _, coeffs = rounds("dejmps", bd.werner_coefficients(f_chain), 1)
    assert pairs_model.predict(sc, sc.apps[0], {"pairs": 5})["fidelity_model"] == \
        pytest.approx(float(coeffs[0]))


def test_teleport_model_is_the_haar_average_of_the_dephased_pair() -> None:
    sc = load_scenario(SCENARIOS / "teleport.toml")
    (app,) = sc.apps
    entry = {"storage_s": {"nodes": ["alice", "bob"], "pairs": 1, "sample": [[0.05, 0.15]]}}
    f = 0.98
    d = 0.2  # both T2 = 1 s
    dephased = f - (1 - math.exp(-d)) / 2 * (f - (1 - f) / 3)
    assert teleport_model.predict(sc, app, entry)["fidelity_model"] == \
        pytest.approx((2 * dephased + 1) / 3, abs=1e-12)
    named = load_scenario(SCENARIOS / "teleport.toml", ["apps.0.state=+"])
    assert teleport_model.predict(named, named.apps[0], entry)["fidelity_model"] is None
