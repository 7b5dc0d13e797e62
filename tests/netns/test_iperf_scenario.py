"""End to end: scenarios/ip-iperf.toml under ``qnet run --netns``: unmodified iperf3 reaches
each path's bottleneck rate (within 10 % of rate x 1448/1514, the payload per frame) over one
wire and over two hops routed by bob's kernel, and UDP below the rate loses only what the
wires themselves report dropping."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from tests.e2e.qnet_process import ROOT, run_qnet
from tests.netns.handmade import missing

SCENARIO = ROOT / "scenarios" / "ip-iperf.toml"
PAYLOAD_SHARE = 1448 / 1514
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(missing("iperf3") is not None, reason=str(missing("iperf3")))]


def test_iperf_reaches_the_bottleneck_rate(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_qnet("run", "--netns", str(SCENARIO), "--run-dir", str(run_dir),
                    "--no-progress", timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    measured = {p["name"]: p["result"] for p in result["programs"]}["alice:measure"]
    links = {(link["a"], link["b"]): link["classical"]["rate_mbps"]
             for link in tomllib.loads(SCENARIO.read_text())["links"]}
    expected = {"bob": links[("alice", "bob")],
                "carol": min(links[("alice", "bob")], links[("bob", "carol")])}
    for target, rate_mbps in expected.items():
        share = measured[target]["mbit_s"] / (rate_mbps * PAYLOAD_SHARE)
        assert 0.9 <= share <= 1.1, (target, measured[target], rate_mbps)
    udp = measured["carol_udp"]
    dropped = sum(link["classical"]["dropped"] for link in result["links"])
    assert udp["packets"] > 1000 and udp["lost_packets"] <= dropped, (udp, dropped)
    assert udp["lost_percent"] < 1.0, udp
