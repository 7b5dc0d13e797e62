"""``qnet run --netns`` with ``[routing]`` (root): a triangle whose direct a-c wire is cut
for 2 s under a UDP stream a -> c by IP. The nodes' kernel tables follow link-state routing:
replies come straight (TTL 64), then through b (TTL 63) within detection + convergence +
the install, then straight again after the restore; nothing is left behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.e2e.qnet_process import running_qnet
from tests.netns.handmade import missing
from tests.netns.test_netns_run import (
    assert_nothing_left,
    namespace_inodes,
    root_interfaces,
    wait_for,
)

pytestmark = pytest.mark.skipif(missing("nsenter") is not None, reason=str(missing("nsenter")))
SEND_INTERVAL_S = 0.02
PROBE = """import json, os, socket, struct, sys, time
# a datagram every 20 ms to c's echo; each reply's TTL (IP_RECVTTL) and arrival time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVTTL", 12), 1)
s.connect((os.environ["QNET_PEER_ADDR_C"], 7000))
s.settimeout(0.002)
start = time.monotonic(); sent = 0; replies = {}
while time.monotonic() < start + float(sys.argv[1]):
    if time.monotonic() >= start + sent * %(interval)r:
        try:
            s.send(struct.pack("!I", sent))
        except OSError:  # no route for a moment, or an ICMP error of an earlier datagram
            pass
        sent += 1
    try:
        data, anc, _, _ = s.recvmsg(64, socket.CMSG_SPACE(4))
    except OSError:
        continue
    ttl = next((struct.unpack("i", d[:4])[0] for _, kind, d in anc if kind == socket.IP_TTL), 0)
    replies.setdefault(struct.unpack("!I", data[:4])[0], (time.monotonic() - start, ttl))
got = sorted(replies.values())
runs = []
for _, ttl in got:
    if runs and runs[-1][0] == ttl:
        runs[-1][1] += 1
    else:
        runs.append([ttl, 1])
gaps = [(b[0] - a[0], a[0]) for a, b in zip(got, got[1:])]
print(json.dumps({"sent": sent, "received": len(got), "ttl_runs": runs,
                  "max_gap_s": max(gaps)[0] if gaps else None}))
""" % {"interval": SEND_INTERVAL_S}
ECHO = ("import os, socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.bind((os.environ['QNET_ADDR'], 7000)); "
        "[s.sendto(d, a) for d, a in iter(lambda: s.recvfrom(100), None)]")
CUT_AT_S, CUT_FOR_S = 2.0, 2.0


def triangle(path: Path, probe: Path) -> Path:
    links = "".join(f"""
[[links]]
a = "{a}"
b = "{b}"
length_km = 1
classical = {{ delay_ms = 2 }}
""" for a, b in (("a", "b"), ("b", "c"), ("a", "c")))
    path.write_text(f"""
[scenario]
name = "ip-triangle-reroute"
duration_s = 6

[routing]
hello_interval_s = 0.1
dead_interval_s = 0.4
metric = "length_km"

[[nodes]]
name = "a"
[[nodes.run]]
name = "probe"
command = [{json.dumps(sys.executable)}, {json.dumps(str(probe))}, "5.5"]
wait = true

[[nodes]]
name = "b"

[[nodes]]
name = "c"
[[nodes.run]]
name = "echo"
command = [{json.dumps(sys.executable)}, "-c", {json.dumps(ECHO)}]
{links}
[[faults]]
at_s = {CUT_AT_S}
action = "cut"
link = "a-c"
for_s = {CUT_FOR_S}
""")
    return path


def test_cutting_a_c_reroutes_the_kernel_via_b_and_back(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    scenario = triangle(tmp_path / "triangle.toml", probe)
    before = root_interfaces()
    run_dir = tmp_path / "run"
    with running_qnet("run", "--netns", "--no-progress", "--run-dir", str(run_dir),
                      str(scenario)) as qnet:
        inodes = wait_for(lambda: len(list(run_dir.glob("netns-*.ready.json"))) == 3
                          and namespace_inodes(run_dir), "the node namespaces")
        _, err_text = qnet.communicate(timeout=90)
    assert qnet.returncode == 0, err_text[-2000:]
    result = json.loads((run_dir / "result.json").read_text())
    got = next(p for p in result["programs"] if p["name"] == "a:probe")["result"]
    assert got is not None, (run_dir / "a.probe.log").read_text()[-2000:]
    # straight, through b during the cut, straight again: each phase once (no flapping)
    assert [ttl for ttl, _ in got["ttl_runs"]] == [64, 63, 64], got
    cut_s = CUT_FOR_S / SEND_INTERVAL_S
    assert all(n >= 0.25 * cut_s for _, n in got["ttl_runs"]), got

    start = next(e["t_emu"] for e in result["events"] if e["kind"] == "start")
    cut = next(f for f in result["routing"]["faults"] if f["action"] == "cut")
    assert cut["detection_ms"] is not None and cut["convergence_ms"] is not None, cut
    cut_at = start + cut["at_s"]
    via_b = {"a": "c>b", "c": "a>b"}  # each end's kernel table reroutes the other via b
    installed = {e["node"]: e["at"] for e in result["events"]
                 if e["kind"] == "kernel_routes" and e["at"] > cut_at
                 and via_b.get(e["node"], "-") in e["next_hops"] and "error" not in e}
    assert set(installed) == {"a", "c"}, [e for e in result["events"]
                                          if e["kind"] == "kernel_routes"]
    rerouted_s = max(installed.values()) - cut_at
    routed_s = (cut["detection_ms"] + cut["convergence_ms"]) / 1000
    assert rerouted_s <= routed_s + 0.25, (rerouted_s, cut)  # ip -batch: a few ms unloaded
    # the stream's outage: at least the detection, at most until both kernels rerouted
    # (+ a send interval, the 8 ms round trip via b, scheduling)
    assert cut["detection_ms"] / 1000 - SEND_INTERVAL_S <= got["max_gap_s"], (got, cut)
    assert got["max_gap_s"] <= rerouted_s + SEND_INTERVAL_S + 0.1, (got, rerouted_s, cut)
    assert_nothing_left(inodes, before)
