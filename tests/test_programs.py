"""User programs (emulator/programs.py): their tables, routes, environment and results."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.programs import (
    command_line,
    env_name,
    kms_environment,
    next_hops,
    program_children,
    program_env,
    programs_section,
    tunnel_configs,
)
from emulator.scenario import ScenarioError, parse_scenario


def scenario(nodes: list[dict], links: list[tuple[str, str]] = (), apps: list[dict] = ()):
    return parse_scenario({
        "scenario": {"name": "p"}, "nodes": nodes,
        "links": [{"a": a, "b": b, "length_km": 1} for a, b in links], "apps": list(apps)})


def test_programs_are_checked_with_their_field_path() -> None:
    sc = scenario([{"name": "a", "run": [{"command": ["python", "x.py"]},
                                         {"command": ["sh"], "name": "y", "listen": True}]},
                   {"name": "b"}])
    assert [p.label for p in sc.nodes[0].run] == ["x_py", "y"]
    with pytest.raises(ScenarioError, match=r"^nodes\[0\]\.run\[1\]\.name: duplicate program"):
        scenario([{"name": "a", "run": [{"command": ["true"]}, {"command": ["true"]}]}])
    with pytest.raises(ScenarioError, match=r"^nodes\[0\]\.run\[1\]\.listen: only one"):
        scenario([{"name": "a", "run": [{"command": ["true"], "name": "1", "listen": True},
                                        {"command": ["true"], "name": "2", "listen": True}]}])
    with pytest.raises(ScenarioError, match=r"^nodes\[0\]\.run\[0\]\.sae: 'x' is not an SAE"):
        scenario([{"name": "a", "sae": [{"id": "s"}], "run": [{"command": ["true"], "sae": "x"}]}])
    with pytest.raises(ScenarioError, match=r"^nodes\[0\]\.run\[0\]\.command"):
        scenario([{"name": "a", "run": [{"command": []}]}])
    with pytest.raises(ScenarioError, match=r"^nodes\[0\]\.run\[0\]\.command: '/no/such' is"):
        scenario([{"name": "a", "run": [{"command": ["/no/such", "x"]}]}])
    with pytest.raises(ScenarioError, match=r"unknown key"):
        scenario([{"name": "a", "run": [{"command": ["true"], "colour": "red"}]}])


def test_next_hops_are_fewest_hop_with_ties_in_file_order() -> None:
    ring = next_hops(list("abcd"), [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")])
    assert ring["a"] == {"b": "b", "d": "d", "c": "b"}  # c is two hops either way: b first
    assert ring["c"] == {"b": "b", "d": "d", "a": "b"}
    line = next_hops(list("abcde"), [("a", "b"), ("b", "c"), ("c", "d")])
    assert line["a"] == {"b": "b", "c": "b", "d": "b"} and "e" not in line["a"]
    assert line["d"] == {"c": "c", "b": "c", "a": "c"}


def test_tunnels_only_when_a_program_or_an_app_needs_them() -> None:
    assert tunnel_configs(scenario([{"name": "a"}, {"name": "b"}], [("a", "b")])) == {}
    sc = scenario([{"name": "a", "run": [{"command": ["true"]}]},
                   {"name": "b", "run": [{"command": ["true"], "listen": True}]}], [("a", "b")])
    tunnels = tunnel_configs(sc)
    assert tunnels["a"].routes == {"b": "b"} and tunnels["a"].listen_port is None
    assert tunnels["b"].listen_port > 0


def test_environment_names_peers_listen_port_and_the_sae() -> None:
    sc = scenario([{"name": "alice", "sae": [{"id": "sae-a"}],
                    "run": [{"command": ["python", "-m", "m"], "env": {"X": "1"}}]},
                   {"name": "bob-2", "sae": [{"id": "sae-b"}]}])
    program = sc.nodes[0].run[0]
    env = program_env("alice", program, {"bob-2": 4000}, 5000)
    assert env["QNET_PEER_BOB_2"] == "127.0.0.1:4000" == env[env_name("bob-2")]
    assert env["QNET_PEERS"] == "bob-2=127.0.0.1:4000"
    assert env["QNET_LISTEN"] == "127.0.0.1:5000" and env["X"] == "1"
    assert env["QNET_NODE"] == "alice" and env["QNET_PROGRAM"] == "m"
    assert command_line(program)[0].endswith("python") and command_line(program)[1:] == ["-m", "m"]

    class Kms:
        def environment(self, sae):
            return {"QNET_SAE_ID": sae, "QNET_CA": f"ca-of-{sae}"}

    kms = kms_environment(Kms(), sc)("alice", program)
    assert kms == {"QNET_PEER_SAE_BOB_2": "sae-b", "QNET_SAE_ID": "sae-a", "QNET_CA": "ca-of-sae-a"}
    assert kms_environment(None, sc) is None


def test_children_are_supervised_programs_and_their_exits_are_results(tmp_path: Path) -> None:
    sc = scenario([{"name": "a", "run": [{"command": ["true"], "name": "one", "wait": True}]},
                   {"name": "b", "run": [{"command": ["true"], "listen": True}]}], [("a", "b")])
    tunnels = tunnel_configs(sc)
    ready = {"a": {"tunnel": {"b": 4001}}, "b": {"tunnel": {"a": 4002}}}
    children = program_children(sc, tmp_path, tunnels, ready, tier=4)
    assert [(c.name, c.role, c.tier, c.expected_exit) for c in children] == [
        ("a.one", "program", 4, True), ("b.true", "program", 4, True)]
    assert children[0].env["QNET_PEER_B"] == "127.0.0.1:4001"
    assert children[1].env["QNET_LISTEN"] == f"127.0.0.1:{tunnels['b'].listen_port}"
    assert children[0].log_path == tmp_path / "a.one.log"
    children[0].exit_code, children[1].exit_code = 0, -15
    section = programs_section(children)
    assert [(e["name"], e["node"], e["exit_code"]) for e in section] == [
        ("a:one", "a", 0), ("b:true", "b", -15)]
