"""emulator.broker: spec parsing, config files, readiness by MQTT round trip, clean stop."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import trio

from emulator import broker as brokers
from emulator.broker import (
    BrokerError,
    BrokerSpec,
    broker_command,
    free_port,
    open_broker,
    parse_broker,
    wait_until_accepting,
)

HAVE_MOSQUITTO = shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()
needs_mosquitto = pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto binary not installed")
BROKERS = ["embedded", pytest.param("mosquitto", marks=needs_mosquitto)]


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize(("text", "expected"), [
    ("embedded", BrokerSpec("embedded")),
    ("mosquitto", BrokerSpec("mosquitto")),
    (" mosquitto ", BrokerSpec("mosquitto")),
    ("mqtt://127.0.0.1:1883", BrokerSpec("external", "127.0.0.1", 1883)),
    ("mqtt://broker.example.org:8883/", BrokerSpec("external", "broker.example.org", 8883)),
    ("mqtt://[::1]:1884", BrokerSpec("external", "::1", 1884)),
])
def test_parse_broker_accepts(text: str, expected: BrokerSpec) -> None:
    assert parse_broker(text) == expected


@pytest.mark.parametrize("text", [
    "", "amqtt", "Embedded", "mqtt://", "mqtt://host", "mqtt://host:0", "mqtt://host:99999",
    "mqtt://host:port", "mqtt://:1883", "mqtts://host:8883", "tcp://host:1883",
    "mqtt://host:1883/topic", "mqtt://user@host:1883", "host:1883",
])
def test_parse_broker_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="broker"):
        parse_broker(text)


def test_broker_command_writes_configs(tmp_path: Path) -> None:
    argv = broker_command(BrokerSpec("embedded"), 12345, tmp_path / "e")
    assert argv is not None and argv[-2] == "-c"
    assert Path(argv[0]).name == "amqtt"
    config = Path(argv[-1]).read_text()
    assert "bind: 127.0.0.1:12345" in config
    assert "allow_anonymous: true" in config
    assert "BrokerSysPlugin" not in config  # no $SYS traffic

    assert broker_command(BrokerSpec("external", "h", 1), 1, tmp_path) is None


@needs_mosquitto
def test_broker_command_mosquitto(tmp_path: Path) -> None:
    argv = broker_command(BrokerSpec("mosquitto"), 12345, tmp_path)
    assert argv is not None and Path(argv[0]).name == "mosquitto"
    lines = Path(argv[-1]).read_text().splitlines()
    assert "listener 12345 127.0.0.1" in lines
    assert "allow_anonymous true" in lines
    assert "persistence false" in lines


def test_missing_mosquitto_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(brokers.shutil, "which", lambda name: None)
    monkeypatch.setattr(brokers, "_MOSQUITTO_FALLBACK", tmp_path / "no-such-binary")
    with pytest.raises(BrokerError, match="mosquitto binary is not installed"):
        broker_command(BrokerSpec("mosquitto"), 1, tmp_path)


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("kind", BROKERS)
async def test_open_broker_serves_mqtt_and_leaves_no_process(kind: str, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "broker.log"
    async with open_broker(kind, tmp_path, log) as info:
        assert info.kind == kind and info.host == "127.0.0.1"
        assert info.pid is not None
        os.kill(info.pid, 0)  # alive
        with trio.fail_after(2):
            await wait_until_accepting(info.host, info.port, timeout=2)
    assert_gone(info.pid)
    assert f"ready on 127.0.0.1:{info.port}" in log.read_text()


@needs_mosquitto
async def test_external_broker_is_checked_not_started(tmp_path: Path) -> None:
    async with open_broker("mosquitto", tmp_path / "m", tmp_path / "m.log") as real:
        async with open_broker(f"mqtt://127.0.0.1:{real.port}", tmp_path, tmp_path / "x.log") as ext:
            assert (ext.host, ext.port, ext.pid, ext.kind) == ("127.0.0.1", real.port, None,
                                                              "external")
        assert real.pid is not None
        os.kill(real.pid, 0)  # leaving the external context did not stop it
        assert not (tmp_path / "x.log").exists()


async def test_wait_until_accepting_times_out_on_closed_port() -> None:
    port = free_port()
    with trio.fail_after(3), pytest.raises(TimeoutError, match=f"127.0.0.1:{port}.*0.3 s"):
        await wait_until_accepting("127.0.0.1", port, timeout=0.3)


async def test_wait_until_accepting_needs_connack_not_just_tcp() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        with trio.fail_after(5), pytest.raises(TimeoutError, match="did not accept an MQTT"):
            await wait_until_accepting("127.0.0.1", port, timeout=0.5)
    finally:
        listener.close()


@needs_mosquitto
async def test_broker_exiting_at_start_is_reported(tmp_path: Path, monkeypatch) -> None:
    # Occupy the port the broker is given: mosquitto exits with "address already in use".
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(brokers, "free_port", lambda: taken.getsockname()[1])
        with trio.fail_after(5), pytest.raises(BrokerError, match="exited with code"):
            async with open_broker("mosquitto", tmp_path, tmp_path / "broker.log"):
                pass


async def test_stubborn_child_is_killed_after_grace(monkeypatch) -> None:
    monkeypatch.setattr(brokers, "TERMINATE_GRACE_S", 0.3)
    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
                  "print('ready', flush=True); time.sleep(30)"
    process = await trio.lowlevel.open_process([sys.executable, "-c", ignore_term],
                                               stdout=-1)
    assert process.stdout is not None
    with trio.fail_after(10):
        await process.stdout.receive_some(16)  # SIG_IGN is installed
        await brokers._terminate(process)
    assert process.returncode == -9
    assert_gone(process.pid)


async def test_cancelled_during_startup_leaves_no_process(tmp_path: Path, monkeypatch) -> None:
    started: list[trio.Process] = []
    real_open_process = trio.lowlevel.open_process

    async def recording_open_process(*args, **kwargs):
        process = await real_open_process(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(brokers.trio.lowlevel, "open_process", recording_open_process)
    with trio.move_on_after(0.05):
        async with open_broker("embedded", tmp_path, tmp_path / "broker.log"):
            await trio.sleep(10)  # amqtt needs > 0.1 s to start, so usually not reached
    assert len(started) == 1
    assert started[0].returncode is not None
    assert_gone(started[0].pid)
