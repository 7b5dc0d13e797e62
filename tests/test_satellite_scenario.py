"""``[links.quantum.pass]``: the shipped Micius scenario against issue 11's figures, loss
tables inline and from CSV with their errors, and result.json's ``pass`` section."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import numpy as np
import pytest

from emulator.physics.detectors import background_yield, gain
from emulator.scenario import ScenarioError, load_scenario, parse_scenario
from nodes.qkd.bb84.pass_results import pass_predictions, pass_section

ROOT = Path(__file__).resolve().parents[1]
MICIUS = ROOT / "scenarios" / "micius-pass.toml"
INTERCONTINENTAL = ROOT / "scenarios" / "micius-intercontinental.toml"
LIAO_KHZ_BPS = 1000.0  # Liao et al. (2017): kilohertz key rate up to 1200 km


def test_micius_scenario_reproduces_the_published_ranges_and_losses():
    link = load_scenario(MICIUS).links[0]
    spec = link.quantum.pass_
    t = np.linspace(0, 273, 2731)
    geometry = spec.geometry(t)
    assert geometry.range_km[0] == pytest.approx(1200, abs=5)
    assert geometry.range_km[-1] == pytest.approx(1200, abs=5)
    # Xinglong under the orbit, the Earth turning: 645 km less 0.3 km, 2.6 s after pass time 0
    assert geometry.range_km.min() == pytest.approx(645, abs=0.5)
    assert t[geometry.range_km.argmin()] + spec.start_s == pytest.approx(2.6, abs=0.2)
    loss = spec.loss_at(t)
    assert loss[0] == pytest.approx(40, abs=1) and loss.min() == pytest.approx(30, abs=1)
    section = pass_section(link, 0.1, 1.16, None)
    at = section["model_at_range"]
    assert at["645_km"]["loss_db"] == pytest.approx(30, abs=1)
    assert at["1200_km"]["loss_db"] == pytest.approx(40, abs=1)
    # the model's sifted key rate at 1200 km: kHz-level as published (factor 2)
    assert LIAO_KHZ_BPS / 2 < at["1200_km"]["sifted_rate_bps"] < 2 * LIAO_KHZ_BPS
    assert at["645_km"]["sifted_rate_bps"] > 8 * at["1200_km"]["sifted_rate_bps"]
    assert 0 < at["1200_km"]["gllp_rate_bps"] < at["1200_km"]["sifted_rate_bps"]
    # the classical link's default delay: the light time at the source's start (1200 km)
    assert link.classical_delay_s == pytest.approx(geometry.range_km[0] / 299_792.458)
    assert link.classical_delay_s == pytest.approx(4.0e-3, rel=0.01)


def raw_pass(**spec) -> dict:
    return {"scenario": {"name": "t"}, "nodes": [{"name": "s"}, {"name": "g"}],
            "links": [{"a": "s", "b": "g", "length_km": 0, "quantum": {"pass": spec}}]}


def test_inline_and_csv_loss_tables(tmp_path: Path):
    sc = parse_scenario(raw_pass(start_s=0, loss_t_s=[0, 10], loss_db=[40, 30]))
    spec = sc.links[0].quantum.pass_
    assert spec.loss_at([0, 5, 10, 11]).tolist() == [40, 35, 30, math.inf]
    assert spec.transmittance(5.0) == pytest.approx(10 ** -3.5)
    (tmp_path / "loss.csv").write_text("time_s,loss_db\n# a comment\n-5,42\n5,31\n")
    (tmp_path / "s.toml").write_text(
        '[scenario]\nname = "t"\n[[nodes]]\nname = "s"\n[[nodes]]\nname = "g"\n'
        '[[links]]\na = "s"\nb = "g"\nlength_km = 0\n'
        '[links.quantum.pass]\nstart_s = -5\nloss_csv = "loss.csv"\n')
    spec = load_scenario(tmp_path / "s.toml").links[0].quantum.pass_
    assert spec.loss_t_s == [-5, 5] and spec.loss_db == [42, 31]
    assert spec.loss_at([0, 10, 11]).tolist() == [42, 31, math.inf]


@pytest.mark.parametrize("spec, message", [
    ({"loss_t_s": [0, 1]}, "go together"),
    ({"loss_t_s": [0, 0], "loss_db": [1, 2]}, "increasing"),
    ({"loss_t_s": [0, 1, 2], "loss_db": [1, 2]}, "length"),
    ({"altitude_km": 700, "closest_range_km": 600}, "below the altitude"),
    ({"loss_csv": "x.csv"}, "only a scenario file"),
    ({"min_elevation_deg": 95}, "min_elevation_deg"),
    ({"station_lat_deg": 40.4, "station_lon_deg": 117.6}, "node_lon_deg: a station needs"),
    ({"station_lat_deg": 40.4, "station_lon_deg": 117.6, "node_lon_deg": 128.7,
      "closest_range_km": 645}, "station_lat_deg: a station's geometry replaces"),
    ({"station_lat_deg": 40.4, "station_lon_deg": 117.6, "node_lon_deg": 150.0},
     "node_lon_deg: the satellite never rises above"),
    ({"station_lat_deg": 91, "station_lon_deg": 117.6, "node_lon_deg": 128.7},
     "station_lat_deg"),
])
def test_bad_pass_is_a_scenario_error_naming_the_field(spec, message):
    with pytest.raises(ScenarioError, match=message) as info:
        parse_scenario(raw_pass(**spec))
    assert str(info.value).startswith("links[0].quantum.pass")


def test_missing_or_bad_csv(tmp_path: Path):
    text = ('[scenario]\nname = "t"\n[[nodes]]\nname = "s"\n[[nodes]]\nname = "g"\n'
            '[[links]]\na = "s"\nb = "g"\nlength_km = 0\n'
            '[links.quantum.pass]\nloss_csv = "loss.csv"\n')
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(ScenarioError, match=r"links\[0\].quantum.pass.loss_csv: cannot read"):
        load_scenario(tmp_path / "s.toml")
    (tmp_path / "loss.csv").write_text("0,1,2\n")
    with pytest.raises(ScenarioError, match="two columns"):
        load_scenario(tmp_path / "s.toml")


def test_pass_section_bins_batches_and_averages_the_model():
    link = load_scenario(MICIUS).links[0]
    q = link.quantum
    rate = q.source.rate_hz
    # 25 batches of 1 s with the model's expected counts: bins of 10 s, the last partial
    ends = [int((k + 1) * rate) for k in range(25)]
    y0 = float(background_yield(q.detector.dark_count_probability))
    detections, sifted = [], []
    for k in range(25):
        eta = float(q.pass_.transmittance(k + 0.5)) * q.detector.efficiency
        detections.append([round(rate * w * float(gain(mu, eta, y0))) for mu, w in
                           zip(q.source.intensities, q.source.intensity_probabilities,
                               strict=True)])
        sifted.append(1000)
    section = pass_section(link, 0.1, 1.16, {"slot_end": ends, "detections": detections,
                                              "sifted_bits": sifted})
    bins = section["bins"]
    assert [b["pulses"] for b in bins] == [10 * rate, 10 * rate, 5 * rate]
    assert [b["t_s"] for b in bins] == [5.0, 15.0, 22.5]
    assert bins[0]["pass_t_s"] == pytest.approx(q.pass_.start_s + 5.0)
    assert section["per_pass"]["worst_gain_deviation_sigma"] < 0.5
    assert section["per_pass"]["sifted_bits"] == 25_000
    assert all(b["sifted_rate_bps"] == pytest.approx(1000) for b in bins)
    assert bins[0]["predicted_gain"] < bins[1]["predicted_gain"] < bins[2]["predicted_gain"]
    predicted = pass_predictions(section, {"ec_efficiency_used": 1.16, "plob_bits_per_pulse": 1})
    assert "plob_bits_per_pulse" not in predicted and predicted["ec_efficiency_used"] == 1.16
    assert bins[0]["predicted_sifted_rate_bps"] < predicted["sifted_rate_bps"] \
        < bins[2]["predicted_sifted_rate_bps"]
    assert 0.005 < predicted["qber"] < 0.02


def test_intercontinental_relays_through_the_satellite_over_two_passes():
    sc = load_scenario(INTERCONTINENTAL)
    (relay,) = [app for app in sc.apps if type(app).__name__ == "RelayApp"]
    assert relay.full_path == ["xinglong", "micius", "graz"]
    passes = [link.quantum.pass_ for link in sc.links]
    assert all(spec is not None and not spec.is_table for spec in passes)
    assert [link.a for link in sc.links] == ["micius", "micius"]  # two downlinks
    # both passes stay above the minimum elevation for the whole run
    t = np.linspace(0, sc.scenario.duration_s, 61)
    assert all(np.isfinite(spec.loss_at(t)).all() for spec in passes)


def test_classical_delay_follows_the_range_over_the_pass():
    """The relay's delay schedule is fibre + L(t)/c at every second of the pass; the shaper
    interpolates it on its wall clock from emulated 0 (time scale 2 halves both axes)."""
    from emulator.child_config import Direction
    from emulator.physics.satellite import light_time
    from emulator.relay_core import DirectionShaper, link_rng

    link = load_scenario(MICIUS).links[0]
    schedule = link.classical_delay_schedule()
    t, delay = np.array(schedule).T
    spec = link.quantum.pass_
    assert np.allclose(delay, light_time(spec.geometry(t).range_km), rtol=0, atol=1e-12)
    assert delay[0] == pytest.approx(link.classical_delay_s)
    assert delay[134] == pytest.approx(2.15e-3, rel=0.01)  # 645 km, near closest approach
    assert delay[273] == pytest.approx(4.0e-3, rel=0.01)  # 1200 km again at the end
    fixed = msgspec.structs.replace(link, classical=msgspec.structs.replace(
        link.classical, delay_ms=3.0))
    assert fixed.classical_delay_schedule() is None
    table = parse_scenario(raw_pass(start_s=0, loss_t_s=[0, 10], loss_db=[40, 30])).links[0]
    assert table.classical_delay_schedule() is None
    shaper = DirectionShaper(Direction(delay_schedule=schedule, rate_bps=None), 2.0,
                             jitter_rng=link_rng(1, "l", "ab", "j"),
                             loss_rng=link_rng(1, "l", "ab", "l"))
    shaper.origin = 100.0  # trio time of emulated 0
    for emulated in (0.0, 10.3, 134.0, 200.7):
        now = 100.0 + emulated / 2.0
        want = float(np.interp(emulated, t, delay)) / 2.0
        assert shaper.transmit(now, 100) - now == pytest.approx(want, rel=1e-9)
