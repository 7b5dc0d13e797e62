"""classical.stream: both ends' shells over two in-process NetServices on loopback (real UDP,
real time), the merge into result.json ``streams``, and the spec's checks."""

from __future__ import annotations

import time
from types import SimpleNamespace

import msgspec
import pytest
import trio

from emulator.child_config import Endpoint
from emulator.clock import EmulatedClock
from emulator.scenario import ScenarioError, parse_scenario
from nodes.apps.stream import results, shell
from nodes.apps.stream.spec import StreamApp
from nodes.net.linkstate import LinkConfig, RoutingConfig
from nodes.net.service import NetService

CFG = RoutingConfig(hello_interval=0.05, dead_interval=0.2, retransmit_interval=0.05,
                    min_lsa_interval=0.05)


async def test_both_ends_report_a_complete_ordered_stream():
    clock = EmulatedClock(time.monotonic())
    socks = {}
    for name in "ab":
        socks[name] = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await socks[name].bind(("127.0.0.1", 0))
    peers = {x: {y: Endpoint(tcp=0, udp=socks[y].getsockname()[1])} for x, y in ("ab", "ba")}
    nets = {x: NetService(x, {"a-b": (y, LinkConfig(length_km=1))}, CFG, clock)
            for x, y in ("ab", "ba")}
    app = StreamApp(a="a", b="b", rate_hz=400, size_bytes=100, stop_before_end_s=0.4, port=1000)
    t_start = clock.now() + 0.1
    entries: dict[str, dict] = {}
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for name in "ab":
                await nursery.start(nets[name].run, socks[name], lambda n=name: peers[n])

            async def end(name: str) -> None:
                node = SimpleNamespace(name=name, net=nets[name], clock=clock, t_start=t_start,
                                       t_end=t_start + 1.5, partial=lambda entry: None)
                (entries[name],) = await shell.run(node, app)

            async with trio.open_nursery() as ends:
                for name in "ab":
                    ends.start_soon(end, name)
            nursery.cancel_scope.cancel()
    sender, receiver = entries["a"], entries["b"]
    assert sender["path"] == "a-b" and sender["all_acked"]
    expected = 400 * (1.5 - 0.4 - sender["started_at_s"])
    assert abs(sender["sent"] - expected) <= 2  # paced by the emulated clock
    assert receiver["delivered"] == sender["sent"] and receiver["duplicates"] == 0
    assert receiver["out_of_order"] == 0
    assert 0 < receiver["max_gap_ms"] < 200 and receiver["latency_ms_median"] < 50
    (merged,) = results.merge(None, app, [sender, receiver])
    assert (merged["sent"], merged["lost"], merged["src"], merged["dst"]) == (
        sender["sent"], 0, "a", "b")


def test_merge_without_the_receiver_leaves_lost_unknown():
    app = StreamApp(a="a", b="b", port=1000)
    (merged,) = results.merge(None, app, [{"role": "sender", "sent": 10}])
    assert merged["sent"] == 10 and merged["delivered"] is None and merged["lost"] is None


def raw(*apps):
    return {"scenario": {"name": "t", "duration_s": 3}, "nodes": [{"name": "a"}, {"name": "b"}],
            "links": [{"a": "a", "b": "b", "length_km": 1}], "apps": list(apps)}


def test_spec_checks_and_default_port():
    sc = parse_scenario(raw({"kind": "classical.stream", "a": "a", "b": "b"},
                            {"kind": "classical.stream", "a": "b", "b": "a"}))
    assert [app.port for app in sc.apps] == [1000, 1001]
    assert msgspec.to_builtins(sc.apps[0])["kind"] == "classical.stream"
    for app, field in [({"a": "a", "b": "a"}, r"apps\[0\]\.b"),
                       ({"a": "a", "b": "b", "stop_before_end_s": 3}, r"apps\[0\]\.stop_before"),
                       ({"a": "a", "b": "b", "size_bytes": 8}, r"apps\[0\]\.size_bytes"),
                       ({"a": "a", "b": "b", "rate_hz": 0}, r"apps\[0\]\.rate_hz")]:
        with pytest.raises(ScenarioError, match=field):
            parse_scenario(raw({"kind": "classical.stream", **app}))
    with pytest.raises(ScenarioError, match=r"apps\[1\]\.port"):
        parse_scenario(raw({"kind": "classical.stream", "a": "a", "b": "b", "port": 5},
                           {"kind": "classical.stream", "a": "a", "b": "b", "port": 5}))
