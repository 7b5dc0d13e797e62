"""Scenario keys of the key service and what the orchestrator derives from them."""

from __future__ import annotations

import stat

import msgspec
import pytest

from emulator.child_config import NodeConfig
from emulator.pki import kms_setup
from emulator.scenario import ScenarioError, parse_scenario


def scenario(**extra) -> dict:
    return {"scenario": {"name": "k"},
            "nodes": [{"name": "alice", "sae": [{"id": "sae-a"}]},
                      {"name": "bob", "sae": [{"id": "sae-b"}, {"id": "sae-b2"}]},
                      {"name": "carol"}],
            "links": [{"a": "alice", "b": "bob", "length_km": 1},
                      {"a": "bob", "b": "carol", "length_km": 1}], **extra}


def test_saes_and_kms_options_are_validated() -> None:
    sc = parse_scenario(scenario(kms={"key_size": 128, "min_key_size": 64}))
    assert sc.saes() == {"sae-a": "alice", "sae-b": "bob", "sae-b2": "bob"}
    assert sc.kms.key_size == 128 and sc.kms.max_key_count == 100_000
    for bad, where in [({"kms": {"key_size": 100}}, "kms.key_size"),
                       ({"kms": {"key_size": 64, "min_key_size": 128}}, "kms.min_key_size"),
                       ({"kms": {"colour": 1}}, "kms.colour")]:
        with pytest.raises(ScenarioError, match=where):
            parse_scenario(scenario(**bad))
    raw = scenario()
    raw["nodes"][2]["sae"] = [{"id": "sae-a"}]
    with pytest.raises(ScenarioError, match=r"nodes\[2\]\.sae\[0\]\.id: duplicate SAE"):
        parse_scenario(raw)


def test_setup_makes_pki_configs_and_curl_lines(tmp_path) -> None:
    assert kms_setup(parse_scenario({"scenario": {"name": "k"}, "nodes": [{"name": "a"}]}),
                     tmp_path, lambda: 1) is None
    ports = iter(range(40000, 40010))
    (tmp_path / "kms").mkdir()
    (tmp_path / "kms" / "alice.keys.sqlite").write_bytes(b"old run")
    setup = kms_setup(parse_scenario(scenario()), tmp_path, lambda: next(ports))
    assert set(setup.nodes) == {"alice", "bob", "carol"}  # every node runs a KME
    assert not (tmp_path / "kms" / "alice.keys.sqlite").exists()  # a reused run dir: fresh
    alice = setup.nodes["alice"]
    assert alice.port == 40000 and alice.saes == setup.saes and alice.settings.key_size == 256
    assert stat.S_IMODE((tmp_path / "kms" / "sae-a.key").stat().st_mode) == 0o600
    readme = (tmp_path / "kms" / "README.txt").read_text()
    assert "# sae-a (at alice) with sae-b (at bob)" in readme and "sae-b2" in readme
    assert "carol" not in readme  # no SAE there
    env = setup.environment("sae-b")
    assert env["QNET_KME_URL"] == "https://127.0.0.1:40001" and env["QNET_SAE_ID"] == "sae-b"
    config = msgspec.json.decode(msgspec.json.encode(alice), type=type(alice))
    assert config == alice and "kms" in NodeConfig.__struct_fields__
