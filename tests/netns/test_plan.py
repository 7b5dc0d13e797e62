"""The --netns address plan and static routes (pure: no root needed)."""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from emulator.netns import setup
from emulator.netns.plan import PlanError, make_plan, routes_of, static_next_hops
from emulator.netns.routes import route_commands
from emulator.scenario import ScenarioError, parse_scenario


def scenario(links: list[dict], nodes: list[str] | None = None):
    names = nodes or sorted({end for link in links for end in (link["a"], link["b"])})
    return parse_scenario({"scenario": {"name": "plan", "duration_s": 1},
                           "nodes": [{"name": n} for n in names], "links": links})


def chain():
    return scenario([{"a": "alice", "b": "bob", "length_km": 5},
                     {"a": "bob", "b": "carol", "length_km": 5}], ["alice", "bob", "carol"])


def test_default_plan_addresses_interfaces_and_mtu():
    plan = make_plan(chain())
    assert [str(plan.addr4[n]) for n in plan.nodes] == ["10.255.0.1", "10.255.0.2", "10.255.0.3"]
    assert str(plan.addr6["carol"]) == "fd00:716e:6574:ffff::3"
    ab, bc = plan.wires
    assert (str(ab.net4), str(bc.net4)) == ("10.0.0.0/24", "10.0.1.0/24")
    assert (str(ab.net6), str(bc.net6)) == ("fd00:716e:6574::/64", "fd00:716e:6574:1::/64")
    bob = {iface.peer: iface for iface in plan.interfaces("bob")}
    assert bob["alice"].name == "q-alice" and str(bob["alice"].addr4) == "10.0.0.2/24"
    assert str(bob["alice"].peer4) == "10.0.0.1" and str(bob["carol"].addr6) == "fd00:716e:6574:1::1/64"
    assert all(iface.mtu == 1500 for w in plan.wires for iface in w.ends.values())


def test_subnet_mtu_and_interface_name_fallbacks():
    long_name = "a-node-with-a-long-name"
    plan = make_plan(scenario([
        {"a": "x", "b": long_name, "length_km": 1,
         "classical": {"subnet": "192.168.7.0/30", "mtu": 9000}},
        {"a": "x", "b": "y", "length_km": 1}, {"a": "y", "b": "x", "length_km": 2}],
        ["x", "y", long_name]))
    first = plan.wires[0]
    assert str(first.ends["x"].addr4) == "192.168.7.1/30" and str(first.ends[long_name].peer4) == "192.168.7.1"
    assert first.ends["x"].mtu == 9000
    assert first.ends["x"].name == "qnl0"  # q-<long name> does not fit in 15 characters
    assert [i.name for i in plan.interfaces("x")] == ["qnl0", "qnl1", "qnl2"]  # two links to y
    assert all(len(i.name) <= 15 for n in plan.nodes for i in plan.interfaces(n))


@pytest.mark.parametrize(("subnet", "message"), [
    ("10.0.0.0/31", "no room for two hosts"),
    ("10.255.3.0/24", "overlaps the node addresses"),
    ("10.0.0.5/24", "has host bits set"),
])
def test_bad_subnets_are_refused_with_the_field(subnet, message):
    sc = scenario([{"a": "a", "b": "b", "length_km": 1, "classical": {"subnet": subnet}}])
    with pytest.raises(PlanError, match=rf"links\[0\]\.classical\.subnet: .*{message}"):
        make_plan(sc)


def test_overlapping_subnets_are_refused():
    sc = scenario([{"a": "a", "b": "b", "length_km": 1},  # default 10.0.0.0/24
                   {"a": "b", "b": "c", "length_km": 1, "classical": {"subnet": "10.0.0.0/16"}}])
    with pytest.raises(PlanError, match=r"links\[1\].*overlaps 10\.0\.0\.0/24"):
        make_plan(sc)


def test_mtu_below_ipv6_minimum_is_a_scenario_error():
    with pytest.raises(ScenarioError, match="mtu"):
        scenario([{"a": "a", "b": "b", "length_km": 1, "classical": {"mtu": 1000}}])


def test_static_routes_follow_the_shortest_length_not_the_fewest_hops():
    # a triangle: a-c directly is 100 km, a-b-c is 20 km
    sc = scenario([{"a": "a", "b": "c", "length_km": 100}, {"a": "a", "b": "b", "length_km": 10},
                   {"a": "b", "b": "c", "length_km": 10}])
    plan = make_plan(sc)
    assert static_next_hops(plan, "a") == {"b": "b", "c": "b"}
    routes = {str(r.dest): r for r in routes_of(plan, "a", static_next_hops(plan, "a"))}
    via_b = plan.wire("a-b").ends["b"]
    assert routes["10.255.0.3/32"].gateway == via_b.addr4.ip  # c's node address, via b
    assert routes["10.255.0.3/32"].device == plan.wire("a-b").ends["a"].name
    assert routes["fd00:716e:6574:ffff::3/128"].gateway == via_b.addr6.ip
    assert "10.0.2.0/24" in routes  # the b-c wire, via b
    assert {str(r.src) for r in routes.values()} == {"10.255.0.1", "fd00:716e:6574:ffff::1"}
    assert "10.0.0.0/24" not in routes  # a is on a-c: the kernel's connected route serves it


def _owner(plan, address):
    for node in plan.nodes:
        if address in (plan.addr4[node], plan.addr6[node]):
            return node
    for wire in plan.wires:
        for node, iface in wire.ends.items():
            if address in (iface.addr4.ip, iface.addr6.ip):
                return node
    raise AssertionError(address)


def _forward(plan, tables, node, address):
    """Next node a packet for ``address`` goes to from ``node`` (connected routes first)."""
    for iface in plan.interfaces(node):
        net = iface.addr4.network if address.version == 4 else iface.addr6.network
        if address in net:
            return iface.peer if address in (iface.peer4, iface.peer6) else None
    for route in tables[node]:
        if address in route.dest:
            return next(i.peer for i in plan.interfaces(node) if i.name == route.device)
    raise AssertionError(f"{node} has no route to {address}")


def test_every_address_is_reachable_from_every_node_without_loops():
    """Random connected graphs (zero lengths included): following each node's kernel table
    reaches the owner of every node and wire address in fewer hops than there are nodes."""
    rng = random.Random(7)
    for _ in range(30):
        n = rng.randint(2, 9)
        names = [f"n{i}" for i in range(n)]
        links = [{"a": names[i], "b": names[rng.randrange(i)], "length_km": rng.choice([0, 1, 5, 50])}
                 for i in range(1, n)]  # a spanning tree, then extra links
        for _ in range(rng.randint(0, n)):
            a, b = rng.sample(names, 2)
            links.append({"a": a, "b": b, "length_km": rng.choice([0, 1, 5, 50])})
        for i, link in enumerate(links):
            link["name"] = f"l{i}"
        plan = make_plan(scenario(links, names))
        tables = {node: routes_of(plan, node, static_next_hops(plan, node)) for node in names}
        addresses = [*plan.addr4.values(), *plan.addr6.values(),
                     *(a for w in plan.wires for i in w.ends.values() for a in (i.addr4.ip, i.addr6.ip))]
        for source in names:
            for address in addresses:
                owner, node, hops = _owner(plan, address), source, 0
                while node != owner:
                    nxt = _forward(plan, tables, node, address)
                    node = owner if nxt is None else nxt
                    hops += 1
                    assert hops < n, f"loop from {source} to {address}"


def test_route_commands_replace_and_delete_what_a_new_table_lacks():
    plan = make_plan(chain())
    old = routes_of(plan, "alice", static_next_hops(plan, "alice"))
    lines = route_commands(old)
    assert "route replace 10.255.0.3/32 via 10.0.0.2 dev q-bob src 10.255.0.1" in lines
    assert ("route replace fd00:716e:6574:1::/64 via fd00:716e:6574::2 dev q-bob "
            "src fd00:716e:6574:ffff::1") in lines
    gone = route_commands([], old)
    assert sorted(gone) == sorted(f"route del {r.dest}" for r in old)


def test_program_address_variables():
    plan = make_plan(chain())
    env = setup.address_env(plan, "bob")
    assert env["QNET_ADDR"] == "10.255.0.2" and env["QNET_ADDR6"] == "fd00:716e:6574:ffff::2"
    assert env["QNET_PEER_ADDR_CAROL"] == "10.255.0.3" and "QNET_PEER_ADDR_BOB" not in env
    assert env["QNET_WIRE_ADDR_ALICE"] == "10.0.0.2" and env["QNET_PEER_WIRE_ADDR_ALICE"] == "10.0.0.1"
    assert env["QNET_PEER_WIRE_ADDR6_CAROL"] == "fd00:716e:6574:1::2"
    assert env["QNET_IFACE_CAROL"] == "q-carol"
    assert all(ipaddress.ip_address(v) for k, v in env.items() if "ADDR" in k)


def test_neighbours_are_reached_at_their_wire_addresses():
    plan = make_plan(chain())
    ready = {"alice": {"tcp": {"bob": 1001}, "udp": 2001},
             "bob": {"tcp": {"alice": 1002, "carol": 1003}, "udp": 2002},
             "carol": {"tcp": {"bob": 1004}, "udp": 2003}}
    peers = setup.peer_endpoints(plan, chain().links, ready)
    assert peers["alice"]["bob"].host == "10.0.0.2" and peers["alice"]["bob"].tcp == 1002
    assert peers["carol"]["bob"].host == "10.0.1.1" and peers["bob"]["carol"].host == "10.0.1.2"
    assert peers["carol"]["bob"].tcp == 1003 and peers["bob"]["carol"].udp == 2003
    assert "carol" not in peers["alice"]  # only neighbours: the node layer goes hop by hop


def test_without_root_netns_is_refused(monkeypatch):
    monkeypatch.setattr(setup.os, "geteuid", lambda: 1000)
    assert "--netns needs root" in setup.why_not_available()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run qnet as another user")
def test_qnet_run_netns_as_a_user_exits_2_with_the_reason():
    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o755)
        path = folder / "two.toml"
        path.write_text('[scenario]\nname = "two"\nduration_s = 1\n[[nodes]]\nname = "a"\n'
                        '[[nodes]]\nname = "b"\n[[links]]\na = "a"\nb = "b"\nlength_km = 1\n')
        path.chmod(0o644)
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               sys.executable, "-m", "emulator", "run", "--netns", str(path)],
                              capture_output=True, text=True, timeout=60, cwd=folder)
    finally:
        shutil.rmtree(folder)
    assert done.returncode == 2, done.stderr
    assert "--netns needs root" in done.stderr
