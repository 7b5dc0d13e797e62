"""Scenario validation: every mistake is reported with its field path, before anything runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emulator.scenario import ScenarioError, apply_override, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "scenarios" / "quickstart.toml"


def test_quickstart_defaults() -> None:
    sc = load_scenario(QUICKSTART)
    link = sc.links[0]
    assert link.id == "alice-bob"
    assert link.classical_delay_s == pytest.approx(25 * 4.9e-6)
    assert link.quantum.source.rate_hz == 1e8
    assert sc.expect[0].holds(0.02) and not sc.expect[0].holds(0.06)


def test_override_by_dotted_path_is_validated_like_the_file() -> None:
    sc = load_scenario(QUICKSTART, ["links.0.length_km=50", "scenario.seed=7"])
    assert sc.links[0].length_km == 50 and sc.scenario.seed == 7
    with pytest.raises(ScenarioError, match=r"^links\[0\]\.length_km: "):
        load_scenario(QUICKSTART, ["links.0.length_km=ten"])
    with pytest.raises(ScenarioError, match=r"^links\.5: no list element"):
        load_scenario(QUICKSTART, ["links.5.length_km=1"])


def test_override_creates_nested_tables() -> None:
    raw = {"a": [{"b": 1}]}
    apply_override(raw, "a.0.c.d=true")
    assert raw == {"a": [{"b": 1, "c": {"d": True}}]}


BAD = [
    ("links.0.length_km", '"ten"', r"^links\[0\]\.length_km: Expected `float`, got `str`"),
    ("links.0.colour", '"red"', r"^links\[0\]\.colour: unknown key"),
    ("links.0.b", '"carol"', r"^links\[0\]\.b: unknown node 'carol'"),
    ("links.0.length_km", "-3", r"^links\[0\]\.length_km: Expected `float` >= 0"),
    ("nodes.1.name", '"alice"', r"^nodes\[1\]\.name: duplicate node 'alice'"),
    ("links.0.quantum.detector.efficiency", "1.5",
     r"^links\[0\]\.quantum\.detector\.efficiency: Expected `float` <= 1"),
    ("apps.0.kind", '"qkd.nope"', r"^apps\[0\]\.kind: Invalid value 'qkd.nope'"),
    ("faults", '[{at_s = 1, action = "cut", link = "nowhere"}]',
     r"^faults\[0\]\.link: unknown link 'nowhere'"),
]


@pytest.mark.parametrize("path,value,message", BAD, ids=[b[0] for b in BAD])
def test_bad_values_name_their_path(path: str, value: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_scenario(QUICKSTART, [f"{path}={value}"])


def test_missing_sections_and_types() -> None:
    with pytest.raises(ScenarioError, match=r"^\(top level\): Object missing required field `nodes`"):
        parse_scenario({"scenario": {"name": "x"}})
    with pytest.raises(ScenarioError, match=r"^scenario\.name: "):
        parse_scenario({"scenario": {"name": "has space"}, "nodes": [{"name": "a"}]})


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenario\nname=")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(bad)


def _qnet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emulator", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


@pytest.mark.parametrize("args,needle", [
    (["--set", "links.0.length_km=ten"], "links[0].length_km"),
    (["--set", "links.0.colour=1"], "links[0].colour: unknown key"),
    (["--set", "links.0.a=zed"], "links[0].a: unknown node 'zed'"),
    (["--set", "links.0.length_km=-1"], "links[0].length_km"),
    (["--set", "nodes.0.name=bob"], "nodes[1].name: duplicate node 'bob'"),
    (["--broker", "amqp://x"], "--broker"),
])
def test_qnet_run_exits_2_on_invalid_input_before_starting_anything(
        args: list[str], needle: str, tmp_path: Path) -> None:
    done = _qnet("run", str(QUICKSTART), "--run-dir", str(tmp_path / "run"), *args)
    assert done.returncode == 2, done.stderr
    assert needle in " ".join(done.stderr.split())
    assert not (tmp_path / "run").exists()  # nothing was started, not even the run folder


def test_qnet_run_missing_file_exits_2(tmp_path: Path) -> None:
    done = _qnet("run", str(tmp_path / "missing.toml"))
    assert done.returncode == 2 and "no such file" in done.stderr


def test_qnet_validate_and_list() -> None:
    assert _qnet("validate", str(QUICKSTART)).returncode == 0
    listing = _qnet("list")
    assert listing.returncode == 0 and "quickstart" in listing.stdout


NOT_FINITE = [
    ("scenario.duration_s", "inf"), ("scenario.time_scale", "nan"),
    ("links.0.length_km", "inf"), ("links.0.quantum.source.mu", "nan"),
    ("links.0.quantum.source.rate_hz", "-inf"), ("links.0.classical.rate_mbps", "inf"),
    ("links.0.quantum.source.decoys", "[0.1, nan]"), ("expect.0.lt", "inf"),
]


@pytest.mark.parametrize("path,value", NOT_FINITE, ids=[p for p, _ in NOT_FINITE])
def test_non_finite_numbers_are_rejected_with_their_path(path: str, value: str) -> None:
    where = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", path)
    if value.startswith("["):
        where += "[1]"
    with pytest.raises(ScenarioError, match=rf"^{re.escape(where)}: must be a finite number"):
        load_scenario(QUICKSTART, [f"{path}={value}"])


def test_non_finite_in_an_app_table_is_rejected_too() -> None:
    with pytest.raises(ScenarioError, match=r"^apps\[0\]\.sample_fraction: must be a finite"):
        load_scenario(QUICKSTART, ["apps.0.sample_fraction=nan"])


@pytest.mark.parametrize("seed,ok", [(0, True), (2**63 - 1, True), (-1, False), (2**63, False)])
def test_seed_range_is_what_numpy_and_the_prf_take(seed: int, ok: bool) -> None:
    if ok:
        assert load_scenario(QUICKSTART, [f"scenario.seed={seed}"]).scenario.seed == seed
        np.random.default_rng([seed, 1])  # what the nodes and the daemon seed with
        return
    with pytest.raises(ScenarioError, match=r"^scenario\.seed: Expected `int` [<>]= "):
        load_scenario(QUICKSTART, [f"scenario.seed={seed}"])


@pytest.mark.parametrize("args,needle", [
    (["--seed", "-1"], "scenario.seed: Expected `int` >= 0"),
    (["--seed", str(2**63)], "scenario.seed: Expected `int` <= 9223372036854775807"),
    (["--duration", "inf"], "scenario.duration_s: must be a finite number, got inf"),
    (["--time-scale", "nan"], "scenario.time_scale: must be a finite number, got nan"),
])
def test_run_and_validate_agree_on_bad_numbers(args: list[str], needle: str,
                                               tmp_path: Path) -> None:
    """``qnet run`` and ``qnet validate`` call the same loader: same exit 2, same message."""
    done = _qnet("run", str(QUICKSTART), "--run-dir", str(tmp_path / "run"), *args)
    assert done.returncode == 2, done.stderr
    assert needle in " ".join(done.stderr.split())
    assert not (tmp_path / "run").exists()
    option = {"--seed": "scenario.seed", "--duration": "scenario.duration_s",
              "--time-scale": "scenario.time_scale"}[args[0]]
    checked = _qnet("validate", str(QUICKSTART), "--set", f"{option}={args[1]}")
    assert checked.returncode == 2 and needle in " ".join(checked.stderr.split())
