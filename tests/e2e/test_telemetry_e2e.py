"""End to end: the telemetry plane of a real run, watched and attacked from outside.

One quickstart run whose nodes are named ``relay`` and ``control`` (names that used to
collide with topic subtrees). While it runs, the test logs in as the read-only observer and
sees live typed metrics with a running QBER; an anonymous client is refused; node ``relay``'s
own login (read from its config file, as a compromised node would) publishes a deeply nested
array on its metrics topic, a forged ``control/stop`` and a forged result for ``control``.
The run must still end with exit 0, count the malformed payload and keep the real results.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import trio
from qnet_process import ROOT, alive, running_qnet

from emulator import telemetry
from emulator.broker import OBSERVER_FILE
from emulator.mqtt import MqttConnectError, open_mqtt

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

BROKERS = ["embedded", pytest.param("mosquitto", marks=pytest.mark.skipif(
    not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()),
    reason="mosquitto binary not installed"))]


async def wait_for_file(path: Path, process, timeout: float = 30.0) -> dict:
    with trio.fail_after(timeout):
        while not path.exists():
            assert process.poll() is None, "qnet exited early"
            await trio.sleep(0.05)
    return json.loads(path.read_text())


async def wait_exit(process, timeout: float = 90.0) -> int:
    with trio.fail_after(timeout):
        while process.poll() is None:
            await trio.sleep(0.1)
    return process.returncode


@pytest.mark.parametrize("broker", BROKERS)
async def test_nodes_named_relay_and_control_survive_a_hostile_telemetry_plane(
        broker: str, tmp_path: Path) -> None:
    text = (ROOT / "scenarios" / "quickstart.toml").read_text()
    scenario = tmp_path / "names.toml"
    scenario.write_text(text.replace("alice", "relay").replace("bob", "control"))
    run_dir = tmp_path / "run"
    with running_qnet("run", str(scenario), "--duration", "4", "--run-dir", str(run_dir),
                      "--broker", broker, "--no-progress") as qnet:
        observer = await wait_for_file(run_dir / OBSERVER_FILE, qnet)
        await wait_for_file(run_dir / "relay.ready.json", qnet)  # its config came first
        node = json.loads((run_dir / "relay.config.json").read_text())
        run, mqtt = node["run_id"], node["mqtt"]
        host, port = observer["host"], observer["port"]

        with pytest.raises(MqttConnectError, match="refused"):
            async with open_mqtt(host, port, "anonymous", connect_timeout=5):
                pass

        live_qber: list[float] = []
        async with (
            open_mqtt(host, port, "watcher", username=observer["username"],
                      password=observer["password"]) as watcher,
            open_mqtt(host, port, "impostor", username=mqtt["username"],
                      password=mqtt["password"]) as impostor,
        ):
            await watcher.subscribe(telemetry.run_filter(run), qos=1)
            nested = b"[" * 50_000 + b"]" * 50_000
            await impostor.publish(telemetry.node_metrics(run, "relay"), nested, qos=1)
            await impostor.publish(telemetry.control_stop(run), b"{}", qos=1)
            forged = telemetry.NodeResult(node="control", apps=[{"app": 0, "forged": True}])
            await impostor.publish(telemetry.node_result(run, "control"),
                                   telemetry.encode(forged), qos=1, retain=True)
            decoder = telemetry.TelemetryDecoder(run)
            with trio.fail_after(60):
                async for message in watcher.messages():
                    got = decoder.decode(message.topic, message.payload)
                    if got is not None and isinstance(got.payload, telemetry.NodeMetrics) \
                            and got.name == "control" and got.payload.qber is not None:
                        live_qber.append(got.payload.qber)
                        if len(live_qber) >= 2:
                            break
        assert decoder.rejected == {"bad_payload": 1}  # the nested array, on a legal topic
        assert 0 < live_qber[-1] < 0.05  # the receiver's running estimate, while it runs
        assert qnet.poll() is None  # the forged stop did not end the run
        assert await wait_exit(qnet) == 0, qnet.stderr.read() if qnet.stderr else ""

    result = json.loads((run_dir / "result.json").read_text())
    assert result["ok"]
    assert result["telemetry_rejected"] >= 1  # the nested array, dropped and counted
    (qkd,) = result["qkd"]
    assert qkd["link"] == "relay-control" and qkd["sifted_bits"] > 0
    assert "forged" not in json.dumps(result)
    processes = {p["name"]: p for p in result["processes"]}
    assert {"relay", "control", "relay-relay-control"} <= set(processes)
    assert processes["relay-relay-control"]["counters"]["messages"] > 0
    assert not [p["pid"] for p in result["processes"] if alive(p["pid"])]
