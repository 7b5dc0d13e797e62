"""End to end: an app kind defined in tests/plugins (echo over the classical link) registered
only through ``QNET_APP_PLUGINS`` runs through ``qnet run``; and each node process is handed
only its part of the scenario (charlie's config holds none of alice-bob's physics)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qnet_process import ROOT, alive, run_qnet

pytestmark = pytest.mark.e2e

SCENARIO = """
[scenario]
name = "echo-plugin"
duration_s = 1

[[nodes]]
name = "alice"
[[nodes]]
name = "bob"
[[nodes]]
name = "charlie"

[[links]]
a = "alice"
b = "bob"
length_km = 31.5
[links.quantum]
attenuation_db_per_km = 0.337
[links.quantum.source]
mu = 0.61
decoys = []

[[links]]
a = "bob"
b = "charlie"
length_km = 20
[links.classical]
delay_ms = 5

[[apps]]
kind = "test.echo"
a = "bob"
b = "charlie"
count = 25

[[expect]]
metric = "echo.bob-charlie.round_trips"
ge = 25
"""


def test_plugin_app_runs_end_to_end_and_nodes_know_only_their_part(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("QNET_APP_PLUGINS", "plugins.echo_app:KIND")
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "tests"))
    scenario = tmp_path / "echo.toml"
    scenario.write_text(SCENARIO)
    run_dir = tmp_path / "run"
    done = run_qnet("run", str(scenario), "--run-dir", str(run_dir), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((run_dir / "result.json").read_text())
    (echo,) = result["echo"]
    assert echo["sent"] == echo["round_trips"] == echo["echoed_by_b"] == 25
    assert echo["reported"] == ["a", "b"]
    # 5 ms each way through the relay: every round trip takes at least 10 ms
    assert echo["rtt_ms_median"] >= 10.0
    assert result["ok"] and result["expectations"][0]["value"] == 25
    assert result["qkd"] == []  # built-in sections are still there, empty
    assert not [p["pid"] for p in result["processes"] if alive(p["pid"])]

    charlie = (run_dir / "charlie.config.json").read_text()
    for leak in ("0.337", "31.5", "0.61", '"source":', '"detector":'):
        assert leak not in charlie, f"charlie was told {leak!r}"
    view = json.loads(charlie)["view"]
    assert view["other_links"] == [{"name": "alice-bob", "a": "alice", "b": "bob"}]
    assert [link["length_km"] for link in view["links"]] == [20.0]
    assert "0.337" in (run_dir / "alice.config.json").read_text()  # alice is an end of it
