"""Link-state routing core: convergence on line, ring and a 16-node mesh in a virtual network,
failure detection within the dead interval, reroute, restore, ageing, restart, metrics."""

from __future__ import annotations

import pytest
from netsim import NetSim, SimLink, line, mesh, ring

from nodes.net.linkstate import (
    LinkConfig,
    LinkStateRouter,
    Metric,
    NeighbourDown,
    RoutingConfig,
    Send,
    shortest_paths,
)
from nodes.net.messages import Hello, LinkAdvert, Lsa

CFG = RoutingConfig(hello_interval=0.5, dead_interval=2.0, retransmit_interval=0.3,
                    refresh_interval=20.0, max_age=60.0)


def downs(sim: NetSim, since: float) -> list[tuple[float, str, NeighbourDown]]:
    return [(t, n, a) for t, n, a in sim.log if isinstance(a, NeighbourDown) and t >= since]


@pytest.mark.parametrize("topology, n", [(line(6), 6), (ring(9), 9), (mesh(4), 16)])
def test_converges_from_a_staggered_start(topology, n):
    sim = NetSim.build(CFG, topology, stagger=0.037)
    t = sim.run_until_converged(10.0)
    assert len(sim.routers) == n
    assert all(len(r.routes) == n - 1 for r in sim.routers.values())
    assert t < 0.037 * n + 2 * CFG.hello_interval  # the last start plus a few round trips
    sim.run_until(t + 3 * CFG.hello_interval)
    assert sim.converged()  # and stays so


def test_line_routes_follow_the_line():
    sim = NetSim.build(CFG, line(5))
    sim.run_until_converged(5.0)
    route = sim.routers["r00"].routes["r04"]
    assert route.path == ("r00", "r01", "r02", "r03", "r04")
    assert (route.link, route.next_hop, route.cost) == ("l0", "r01", 4.0)


def test_equal_cost_ties_break_the_same_way_everywhere():
    sim = NetSim.build(CFG, ring(4))
    sim.run_until_converged(5.0)
    # r00 -> r02 costs 2 via r01 or via r03: the smaller first hop wins, at every router.
    assert sim.routers["r00"].routes["r02"].next_hop == "r01"
    assert sim.routers["r02"].routes["r00"].next_hop == "r01"
    assert sim.routers["r03"].routes["r01"].next_hop == "r00"


def test_cut_is_detected_within_the_dead_interval_and_rerouted_then_restored():
    sim = NetSim.build(CFG, ring(8))
    sim.run_until_converged(5.0)
    assert sim.routers["r00"].routes["r01"].path == ("r00", "r01")
    sim.run_until(7.13)
    cut_at = sim.now
    sim.cut("l0")  # r00-r01, silently: only the missing hellos tell
    sim.run_until(cut_at + CFG.dead_interval + 0.01)
    detected = downs(sim, cut_at)
    assert {(n, a.neighbour, a.reason) for _, n, a in detected} == {("r00", "r01", "dead"),
                                                                     ("r01", "r00", "dead")}
    assert all(t - cut_at <= CFG.dead_interval for t, _, _ in detected)
    reconverged = sim.run_until_converged(cut_at + CFG.dead_interval + 1.0)
    assert sim.routers["r00"].routes["r01"].path == ("r00", "r07", "r06", "r05", "r04", "r03",
                                                     "r02", "r01")
    assert reconverged - max(t for t, _, _ in detected) < 0.2  # flooding, not timers
    restore_at = sim.now
    sim.restore("l0")
    sim.run_until_converged(restore_at + 2 * CFG.hello_interval + 0.5)
    assert sim.routers["r00"].routes["r01"].path == ("r00", "r01")


def test_link_down_from_the_shell_reroutes_at_once():
    sim = NetSim.build(CFG, ring(6))
    sim.run_until_converged(5.0)
    sim.run_until(6.0)
    sim.cut("l2", notify=True)
    assert {(n, a.reason) for _, n, a in downs(sim, 6.0)} == {("r02", "link_down"),
                                                               ("r03", "link_down")}
    assert sim.run_until_converged(7.0) < 6.2


def test_a_dead_nodes_lsa_ages_out_everywhere():
    sim = NetSim.build(CFG, mesh(4))
    sim.run_until_converged(5.0)
    sim.run_until(5.0)
    sim.stop_router("r05")
    sim.run_until_converged(5.0 + CFG.dead_interval + 1.0)
    assert all("r05" not in r.routes for r in sim.routers.values())
    assert all("r05" in r.lsdb for r in sim.routers.values())  # still held, unreachable
    sim.run_until(5.0 + CFG.max_age + 1.0)
    assert all("r05" not in r.lsdb for r in sim.routers.values())
    assert all(r.counters["lsa_aged_out"] == 1 for r in sim.routers.values())
    assert sim.converged()


def test_live_routers_refresh_so_nothing_ages_out():
    sim = NetSim.build(CFG, ring(5))
    sim.run_until_converged(5.0)
    sim.run_until(3 * CFG.max_age)
    assert sim.converged()
    assert all(r.counters["lsa_aged_out"] == 0 for r in sim.routers.values())
    assert all(len(r.lsdb) == 5 for r in sim.routers.values())


def test_a_restarted_router_outbids_its_old_lsa_and_rejoins():
    sim = NetSim.build(CFG, ring(6))
    sim.run_until_converged(5.0)
    sim.run_until(30.0)  # r02 has refreshed: the others hold its LSA with seq > 1
    old_seq = sim.routers["r00"].lsdb["r02"].lsa.seq
    sim.stop_router("r02")
    sim.run_until_converged(30.0 + CFG.dead_interval + 1.0)
    sim.start_router("r02", sim.now + 1.0)
    back = sim.run_until_converged(sim.now + 5.0)
    sim.run_until(sim.now + CFG.min_lsa_interval + 0.1)  # the outbid may be held that long
    assert sim.routers["r02"].counters["lsa_own_outbid"] >= 1
    assert sim.routers["r00"].lsdb["r02"].lsa.seq > old_seq
    assert sim.routers["r01"].routes["r03"].path == ("r01", "r02", "r03")
    assert back < 33.0 + CFG.dead_interval + 1.0


def test_flooding_is_reliable_over_lossy_links():
    links = mesh(4)
    for link in links.values():
        link.drop = 0.3
    sim = NetSim.build(CFG, links)
    sim.run_until_converged(30.0)
    assert sim.dropped > 0
    assert sum(r.counters["lsa_retransmitted"] for r in sim.routers.values()) > 0


def _square(delay_fast: float, delay_slow: float) -> dict[str, SimLink]:
    # r0-r1-r3 is long but fast; r0-r2-r3 short but slow.
    return {"a": SimLink("r0", "r1", delay_fast, length_km=10.0),
            "b": SimLink("r1", "r3", delay_fast, length_km=10.0),
            "c": SimLink("r0", "r2", delay_slow, length_km=1.0),
            "d": SimLink("r2", "r3", delay_slow, length_km=1.0)}


@pytest.mark.parametrize("metric, via", [(Metric.named("length_km"), "r2"),
                                         (Metric.named("rtt"), "r1"),
                                         (Metric(length_km=1.0, rtt_ms=0.01), "r2"),
                                         (Metric(length_km=1.0, rtt_ms=1.0), "r1")])
def test_the_metric_decides_the_path(metric, via):
    cfg = RoutingConfig(hello_interval=0.5, dead_interval=2.0, metric=metric)
    sim = NetSim.build(cfg, _square(0.001, 0.02))
    sim.run_until(10.0)  # RTTs measured by hellos, re-advertised
    assert sim.converged()
    assert sim.routers["r0"].routes["r3"].next_hop == via
    rtt = sim.routers["r0"].links["c"].srtt
    assert rtt == pytest.approx(0.04, rel=1e-6)


def test_rtt_samples_from_the_shell_move_routes_rate_limited():
    cfg = RoutingConfig(hello_interval=0.5, dead_interval=2.0, metric=Metric.named("rtt"),
                        min_lsa_interval=1.0)
    sim = NetSim.build(cfg, _square(0.001, 0.0011))
    sim.run_until_converged(5.0)
    sim.run_until(5.0)
    r0 = sim.routers["r0"]
    assert r0.routes["r3"].next_hop == "r1"
    before = r0.counters["lsa_originated"]
    for i in range(50):  # a burst of slow samples on link a: at most one origination now
        sim._apply("r0", r0.rtt_sample("a", 0.5, sim.now))
    assert r0.counters["lsa_originated"] - before == 1
    sim.run_until(5.0 + cfg.min_lsa_interval + 0.01)  # the held-back one, once
    assert r0.counters["lsa_originated"] - before == 2
    assert r0.routes["r3"].next_hop == "r2"


def test_bad_hellos_are_counted_not_raised():
    r = LinkStateRouter("x", {"l": LinkConfig(1.0)}, CFG, 0.0)
    assert r.receive("nope", Hello("y", "nope", 0.5, 2.0, 0.0), 0.1) == []
    assert r.receive("l", Hello("y", "l", 1.0, 2.0, 0.0), 0.1) == []
    assert r.receive("l", Hello("y", "other", 0.5, 2.0, 0.0), 0.1) == []
    assert r.receive("l", Hello("x", "l", 0.5, 2.0, 0.0), 0.1) == []
    assert r.receive("l", Lsa("y", 1, 0.0), 0.1) == []  # no neighbour on the link yet
    assert r.counters == {"dropped_unknown_link": 1, "dropped_hello_interval_mismatch": 1,
                          "dropped_hello_link_mismatch": 2, "dropped_not_adjacent": 1}


def test_first_hello_is_answered_at_once_and_timers_are_armed():
    r = LinkStateRouter("x", {"l": LinkConfig(1.0)}, CFG, 0.0)
    first = r.handle_timer(0.0)
    assert first == [Send("l", Hello("x", "l", 0.5, 2.0, 0.0))]
    assert r.next_deadline() == 0.5
    reply = r.receive("l", Hello("y", "l", 0.5, 2.0, 0.0), 0.01)
    assert reply == [Send("l", Hello("x", "l", 0.5, 2.0, 0.01, seen="y", echo=0.0, held=0.0))]


def test_shortest_paths_ignores_one_way_adjacencies():
    lsdb = {"a": Lsa("a", 1, 0.0, (LinkAdvert("b", "ab", 1.0), LinkAdvert("c", "ac", 5.0))),
            "b": Lsa("b", 1, 0.0, (LinkAdvert("a", "ab", 1.0),)),
            "c": Lsa("c", 1, 0.0, (LinkAdvert("a", "ac", 5.0), LinkAdvert("b", "bc", 1.0)))}
    routes = shortest_paths("a", lsdb, Metric.named("length_km"))
    assert routes["c"].path == ("a", "c")  # b does not list bc: not two-way
    assert set(routes) == {"b", "c"}


def test_config_and_metric_are_checked():
    with pytest.raises(ValueError):
        RoutingConfig(hello_interval=2.0, dead_interval=1.0)
    with pytest.raises(ValueError):
        RoutingConfig(refresh_interval=10.0, max_age=5.0)
    with pytest.raises(ValueError, match="unknown metric"):
        Metric.named("bandwidth")
    assert Metric.named("hops").cost(LinkAdvert("b", "l", 100.0)) == 1.0
    assert Metric().cost(LinkAdvert("b", "l")) > 0


def test_mesh_reconverges_within_50ms_of_detecting_a_cut():
    sim = NetSim.build(CFG, mesh(4))
    sim.run_until_converged(5.0)
    route = sim.routers["r00"].routes["r15"]
    sim.run_until(6.0)
    first = route.path[1]
    link = next(n for n, ln in sim.links.items() if {ln.a, ln.b} == {"r00", first})
    sim.cut(link)
    detected = sim.run_until_down(6.0, 6.0 + CFG.dead_interval + 0.01)
    assert detected - 6.0 <= CFG.dead_interval + 0.005  # + the hello already in flight
    converged = sim.run_until_converged(detected + 1.0, step=0.001)
    assert converged - detected < 0.05
    assert sim.routers["r00"].routes["r15"].path[1] != first


def test_a_max_age_copy_flushes_the_instance_until_its_origin_refreshes():
    sim = NetSim.build(CFG, line(3))
    sim.run_until_converged(5.0)
    sim.run_until(5.0)
    r0 = sim.routers["r00"]
    held = r0.lsdb["r02"].lsa
    sim._apply("r00", r0.receive("l0", Lsa("r02", held.seq, CFG.max_age, held.links), sim.now))
    assert "r02" not in r0.lsdb and "r02" not in r0.routes
    assert r0.counters["lsa_flushed"] == 1
    sim.run_until(5.0 + CFG.refresh_interval + 0.5)
    assert "r02" in r0.routes and sim.converged()


def test_a_quiet_network_floods_nothing_but_hellos():
    sim = NetSim.build(CFG, mesh(4))
    sim.run_until_converged(5.0)
    sim.run_until(2.0)
    originated = sum(r.counters["lsa_originated"] for r in sim.routers.values())
    messages = sim.messages
    sim.run_until(2.0 + 10 * CFG.hello_interval)  # before any refresh
    assert sum(r.counters["lsa_originated"] for r in sim.routers.values()) == originated
    hellos = 10 * 2 * len(sim.links)  # both ends of every link, every interval
    assert sim.messages - messages <= hellos + 2 * len(sim.links)


def test_100_node_mesh_converges_and_reroutes_with_bounded_flooding():
    sim = NetSim.build(CFG, mesh(10))
    sim.run_until_converged(3.0, step=0.05)
    assert sim.messages < 200_000  # each router originates about twice while starting
    assert max(r.counters["lsa_originated"] for r in sim.routers.values()) <= 3
    originated = sum(r.counters["lsa_originated"] for r in sim.routers.values())
    sim.run_until(4.0)  # quiet: no router re-originates (an echo of its own LSA is no outbid)
    assert sum(r.counters["lsa_originated"] for r in sim.routers.values()) == originated
    route = sim.routers["r00"].routes["r99"]
    link = next(n for n, ln in sim.links.items() if {ln.a, ln.b} == set(route.path[1:3]))
    sim.cut(link)
    detected = sim.run_until_down(4.0, 4.0 + CFG.dead_interval + 0.01, step=0.005)
    converged = sim.run_until_converged(detected + 1.0, step=0.005)
    assert converged - detected <= 0.05
    assert sim.routers["r00"].routes["r99"].path[1:3] != route.path[1:3]
