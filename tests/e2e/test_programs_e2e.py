"""End to end: ``[[nodes.run]]`` programs on a 3-hop line reach each other through their
nodes' tunnels (relays, delays and all), log to their own files, and their exit statuses are
result.json ``programs`` entries that expectations can test; none outlives the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from qnet_process import alive, run_qnet

pytestmark = pytest.mark.e2e

SERVER = """
import os, socket, sys
host, port = os.environ["QNET_LISTEN"].split(":")
server = socket.create_server((host, int(port)))
print("listening", port, flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data[::-1])
"""

CLIENT = """
import os, socket, sys, time
host, port = os.environ["QNET_PEER_D"].split(":")
assert set(os.environ["QNET_PEERS"].split(",")) == {
    f"{n}={os.environ['QNET_PEER_' + n.upper()]}" for n in "bcd"}
for attempt in range(100):  # the server program may start a moment later
    sock = socket.create_connection((host, int(port)))
    sock.sendall(b"ping")
    sock.settimeout(5)
    try:
        if sock.recv(4) == b"gnip":
            break
    except (ConnectionError, socket.timeout):
        pass
    sock.close()
    time.sleep(0.05)
else:
    sys.exit(3)
start = time.monotonic()
for i in range(200):
    message = f"message {i:04d}".encode()
    sock.sendall(message)
    got = b""
    while len(got) < len(message):
        got += sock.recv(65536)
    if got != message[::-1]:
        print("mismatch", i, got, flush=True)
        sys.exit(1)
rtt = (time.monotonic() - start) / 200
print(f"200 round trips, {rtt * 1000:.2f} ms each", flush=True)
sys.exit(int(os.environ.get("EXIT_WITH", "0")))
"""

SCENARIO = """
[scenario]
name = "programs"
duration_s = 2

[[nodes]]
name = "a"
[[nodes.run]]
name = "client"
command = ["python", "{client}"]
wait = true
[[nodes.run]]
name = "fails"
command = ["python", "{client}"]
env = {{ EXIT_WITH = "7" }}
wait = true
[[nodes]]
name = "b"
[[nodes]]
name = "c"
[[nodes]]
name = "d"
[[nodes.run]]
name = "server"
command = ["python", "{server}"]
listen = true

[[links]]
a = "a"
b = "b"
length_km = 1
[links.classical]
delay_ms = 1
[[links]]
a = "b"
b = "c"
length_km = 1
[links.classical]
delay_ms = 1
[[links]]
a = "c"
b = "d"
length_km = 1
[links.classical]
delay_ms = 1

[[expect]]
metric = "programs.a:client.exit_code"
le = 0
ge = 0
"""


def test_programs_reach_each_other_over_three_hops_and_exit_codes_are_results(
        tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "client.py").write_text(CLIENT)
    scenario = tmp_path / "programs.toml"
    scenario.write_text(SCENARIO.format(client=tmp_path / "client.py",
                                        server=tmp_path / "server.py"))
    run_dir = tmp_path / "run"
    done = run_qnet("run", str(scenario), "--run-dir", str(run_dir), "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((run_dir / "result.json").read_text())
    programs = {p["name"]: p for p in result["programs"]}
    assert programs["a:client"]["exit_code"] == 0
    assert programs["a:fails"]["exit_code"] == 7  # a program's failure is not the run's
    assert programs["d:server"]["exit_code"] is not None  # stopped at the end
    assert result["ok"] and result["expectations"][0]["value"] == 0
    log = (run_dir / "a.client.log").read_text()
    assert "200 round trips" in log
    rtt_ms = float(log.split(", ")[1].split(" ms")[0])
    assert rtt_ms >= 6.0  # three links, 1 ms each way
    assert "listening" in (run_dir / "d.server.log").read_text()
    assert not [p["pid"] for p in result["processes"] if p["pid"] and alive(p["pid"])]


SHELL_EXAMPLE = """
[scenario]
name = "shell-example"
duration_s = 3
seed = 2

[[nodes]]
name = "alice"
[[nodes.sae]]
id = "sae-alice"
[[nodes.run]]
name = "send"
command = ["examples/etsi014-shell/keyed_message.sh", "send", "bob", "hello bob, from a shell"]
wait = true
[[nodes]]
name = "bob"
[[nodes.sae]]
id = "sae-bob"
[[nodes.run]]
name = "receive"
command = ["examples/etsi014-shell/keyed_message.sh", "receive"]
listen = true
wait = true

[[links]]
a = "alice"
b = "bob"
length_km = 5
[links.quantum.source]
rate_hz = 2e7

[[apps]]
kind = "qkd.bb84"
a = "alice"
b = "bob"
psk = "shell example pre-shared secret"

[[expect]]
metric = "programs.bob:receive.exit_code"
le = 0
ge = 0
"""


@pytest.mark.skipif(not all(shutil.which(tool) for tool in ("curl", "openssl", "jq", "xxd")),
                    reason="the shell example needs curl, openssl, jq and xxd")
def test_shell_example_moves_a_message_keyed_with_curl_and_openssl(tmp_path: Path) -> None:
    scenario = tmp_path / "shell.toml"
    scenario.write_text(SHELL_EXAMPLE)
    run_dir = tmp_path / "run"
    done = run_qnet("run", str(scenario), "--run-dir", str(run_dir), "--no-progress")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert {p["name"]: p["exit_code"] for p in result["programs"]} == {
        "alice:send": 0, "bob:receive": 0}
    sent = (run_dir / "alice.send.log").read_text()
    received = (run_dir / "bob.receive.log").read_text()
    key_id = sent.split("took keys ")[1].split()[0]
    assert f"under key {key_id}: hello bob, from a shell" in received
    kms = {k["node"]: k for k in result["kms"]}
    assert kms["alice"]["enc_requests"] >= 1 and kms["bob"]["dec_requests"] == 1
