"""``scenarios/ion-telecom.toml``: the crossover its result reports is the length where the
two links' model rates (as the daemon heralds them) are equal, found by a root solve over
``--set`` lengths, and it matches the closed form from the scenario's numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy.optimize import brentq

from emulator.physics.heralding import heralding_probability
from emulator.scenario import ScenarioError, load_scenario
from nodes.entanglement.pairs import model

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "ion-telecom.toml"


def rates(length_km: float) -> tuple[float, float]:
    """Both links' model pairs/s at ``length_km``; the telecom one counts true pairs only."""
    sc = load_scenario(SCENARIO, [f"links.0.length_km={length_km}",
                                  f"links.1.length_km={length_km}"])
    visible, telecom = (model.predict(sc, app, {"pairs": 0}) for app in sc.apps)
    true = telecom["pairs_per_s_model"] * telecom["conversion"]["true_herald_fraction"]
    return visible["pairs_per_s_model"], true


def test_reported_crossover_is_where_the_two_links_herald_equally() -> None:
    sc = load_scenario(SCENARIO)
    e = sc.links[1].entanglement
    reported = model.predict(sc, sc.apps[1], {"pairs": 0})["conversion"]["crossover_km"]
    closed = (-20 * math.log10(e.conversion.efficiency)
              / (e.fibre_db_per_km["854"] - e.fibre_db_per_km["1310"]))
    assert reported == pytest.approx(closed, rel=1e-12)
    assert reported == pytest.approx(4.32, abs=0.01)  # Bock et al.'s 26.5 %, 3.0 vs 0.33 dB/km
    root = brentq(lambda x: math.log(rates(x)[1] / rates(x)[0]), 0.5, 20.0, xtol=1e-9)
    assert root == pytest.approx(reported, rel=1e-6)
    below, above = rates(0.5 * reported), rates(2 * reported)
    assert below[0] > below[1] and above[1] > above[0]


def test_links_use_the_loss_at_their_wavelength() -> None:
    sc = load_scenario(SCENARIO)
    visible = model.predict(sc, sc.apps[0], {"pairs": 0})
    e = sc.links[0].entanglement
    assert visible["pairs_per_s_model"] == pytest.approx(
        e.attempt_rate_hz * heralding_probability(8.0, 3.0, e.detector_efficiency,
                                                  e.bsm_efficiency))
    telecom = model.predict(sc, sc.apps[1], {"pairs": 0})
    assert telecom["conversion"]["pairs_per_s_unconverted_model"] == pytest.approx(
        visible["pairs_per_s_model"])


def test_a_converting_link_must_give_its_wavelengths() -> None:
    with pytest.raises(ScenarioError, match=r"links\[1\].entanglement.*wavelength_nm"):
        load_scenario(SCENARIO, ["links.1.entanglement.fibre_db_per_km={854 = 3.0}"])
