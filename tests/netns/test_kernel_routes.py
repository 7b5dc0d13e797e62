"""Routing table -> kernel routes of a node's namespace (pure; no root needed)."""

from __future__ import annotations

import random

import msgspec
import trio
import trio.testing

from emulator.child_config import NodeConfig
from emulator.netns.node_plan import NodeNetns, node_netns
from emulator.netns.plan import distances, make_plan
from nodes.net.kernel_routes import KernelRoutes, follow_routes, kernel_table
from nodes.net.spf import Route
from tests.netns.test_plan import scenario


def triangle():
    return scenario([{"a": "a", "b": "b", "length_km": 1}, {"a": "b", "b": "c", "length_km": 1},
                     {"a": "a", "b": "c", "length_km": 1}], ["a", "b", "c"])


def link_between(plan, x: str, y: str) -> str:
    return next(w.name for w in plan.wires if {w.a, w.b} == {x, y})


def spf_routes(plan, node: str) -> dict[str, Route]:
    """The routes a converged link-state router of ``node`` has (shortest by length)."""
    dist, first = distances(plan, node)
    return {d: Route(d, link_between(plan, node, hop), hop, dist[d], ())
            for d, hop in first.items()}


def test_triangle_direct_routes_then_the_reroute_via_b():
    plan = make_plan(triangle())
    ab, bc, ac = (w.name for w in plan.wires)
    netns = node_netns(plan, "a")
    direct = {"b": Route("b", ab, "b", 1.0, ("a", "b")), "c": Route("c", ac, "c", 1.0, ("a", "c"))}
    state = KernelRoutes(netns)
    lines = state.commands(direct)
    assert "route replace 10.255.0.2/32 via 10.0.0.2 dev q-b src 10.255.0.1" in lines
    assert "route replace 10.255.0.3/32 via 10.0.2.2 dev q-c src 10.255.0.1" in lines
    assert ("route replace fd00:716e:6574:ffff::3/128 via fd00:716e:6574:2::2 dev q-c "
            "src fd00:716e:6574:ffff::1") in lines
    # b-c's subnet: both ends cost 1, the tie goes to the smaller name (b)
    assert "route replace 10.0.1.0/24 via 10.0.0.2 dev q-b src 10.255.0.1" in lines
    assert len(lines) == 6 and not any("unreachable" in x for x in lines)
    state.installed = lines
    assert state.commands(direct) == []  # nothing changed: nothing to run

    rerouted = {"b": direct["b"], "c": Route("c", ab, "b", 2.0, ("a", "b", "c"))}
    lines = state.commands(rerouted)
    assert "route replace 10.255.0.3/32 via 10.0.0.2 dev q-b src 10.255.0.1" in lines
    assert "route replace 10.0.1.0/24 via 10.0.0.2 dev q-b src 10.255.0.1" in lines


def test_a_lost_destination_becomes_unreachable_a_never_reached_one_keeps_its_static_route():
    plan = make_plan(triangle())
    ab = plan.wires[0].name
    state = KernelRoutes(node_netns(plan, "a"))
    only_b = {"b": Route("b", ab, "b", 1.0, ("a", "b"))}
    lines = state.commands(only_b)  # c never reached yet: its static route stays
    assert not any("10.255.0.3" in x or "unreachable" in x for x in lines)
    state.installed = lines
    state.commands({**only_b, "c": Route("c", ab, "b", 2.0, ("a", "b", "c"))})
    lines = state.commands(only_b)  # c reached once, now lost
    assert "route replace unreachable 10.255.0.3/32" in lines
    assert "route replace unreachable fd00:716e:6574:ffff::3/128" in lines
    assert "route replace 10.0.1.0/24 via 10.0.0.2 dev q-b src 10.255.0.1" in lines  # via b
    assert not any("unreachable 10.255.0.2" in x for x in lines)


def test_the_node_gets_addresses_only_and_its_share_survives_the_config_json():
    plan = make_plan(triangle())
    netns = node_netns(plan, "a")
    assert [i.peer for i in netns.interfaces] == ["b", "c"]
    assert [(w.a, w.b, w.net4) for w in netns.wires] == [("b", "c", "10.0.1.0/24")]
    assert "length" not in msgspec.json.encode(netns).decode()  # no physics of other links
    config = msgspec.json.decode(msgspec.json.encode({"netns": netns}), type=dict)
    assert msgspec.convert(config["netns"], NodeNetns) == netns
    assert "netns" in NodeConfig.__struct_fields__


def owner(plan, address) -> str | None:
    for wire in plan.wires:
        for node, iface in wire.ends.items():
            if iface.addr4.ip == address:
                return node
    return None


def test_kernel_tables_of_converged_routers_deliver_every_prefix_without_loops():
    rng = random.Random(7)
    for _ in range(30):
        n = rng.randint(3, 9)
        names = [f"n{i}" for i in range(n)]
        pairs = [(names[i], names[rng.randrange(i)]) for i in range(1, n)]  # connected
        pairs += [tuple(rng.sample(names, 2)) for _ in range(rng.randint(0, n))]
        links = [{"name": f"l{k}", "a": a, "b": b, "length_km": rng.choice([0, 1, 2, 5])}
                 for k, (a, b) in enumerate(pairs)]
        plan = make_plan(scenario(links, names))
        tables = {node: kernel_table(node_netns(plan, node), spf_routes(plan, node))
                  for node in names}
        targets = [(f"{plan.addr4[d]}/32", d) for d in names] + [
            (str(w.net4), w.name) for w in plan.wires]
        for source in names:
            for prefix, goal in targets:
                node, hops = source, 0
                while True:
                    local = node == goal or any(w.name == goal and node in w.ends
                                                for w in plan.wires)
                    if local:
                        break
                    route = next(r for r in tables[node] if str(r.dest) == prefix)
                    assert route.src == plan.addr4[node]
                    node = owner(plan, route.gateway)
                    hops += 1
                    assert hops <= n, f"loop towards {prefix} from {source}"


class FakeNet:
    """A NetService's table and change event, driven by the test."""

    def __init__(self, routes):
        self.routes = routes
        self.changed = trio.Event()

    async def routes_changed(self):
        await self.changed.wait()
        self.changed = trio.Event()
        return self.routes

    def change(self, routes):
        self.routes = routes
        self.changed.set()


class FakeClock:
    def now(self) -> float:
        return 1.5


async def test_follow_routes_installs_each_change_and_catches_up_after_a_slow_install():
    plan = make_plan(triangle())
    ab, _, ac = (w.name for w in plan.wires)
    direct = {"b": Route("b", ab, "b", 1.0, ()), "c": Route("c", ac, "c", 1.0, ())}
    rerouted = {"b": direct["b"], "c": Route("c", ab, "b", 2.0, ())}
    net = FakeNet({})
    installs: list[list[str]] = []
    events: list[tuple[str, dict]] = []
    gate = trio.Event()

    async def ip(lines):
        installs.append(lines)
        if len(installs) == 1:
            await gate.wait()  # a change arrives while this install runs
        return None if len(installs) < 3 else "RTNETLINK answers: Invalid argument"

    async def sink(kind, fields):
        events.append((kind, fields))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow_routes, net, node_netns(plan, "a"), FakeClock(), sink, ip)
            await trio.testing.wait_all_tasks_blocked()
            assert installs == []  # an empty table changes nothing: static routes stay
            net.change(direct)
            await trio.testing.wait_all_tasks_blocked()
            net.change(rerouted)  # during the first install
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert len(installs) == 2
            assert "route replace 10.255.0.3/32 via 10.0.0.2 dev q-b src 10.255.0.1" in installs[1]
            net.change({"b": direct["b"]})
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert [k for k, _ in events] == ["kernel_routes"] * 3
    assert events[1][1]["next_hops"] == "b>b,c>b" and events[1][1]["at"] == 1.5
    assert events[2][1]["unreachable"] == 2 and "Invalid argument" in events[2][1]["error"]
