"""emulator.broker: spec parsing, config files, readiness by MQTT round trip, clean stop."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import stat
from pathlib import Path

import pytest
import trio
import yaml

from emulator import broker as brokers
from emulator import telemetry
from emulator.broker import (
    BrokerError,
    BrokerSpec,
    broker_command,
    free_port,
    open_broker,
    parse_broker,
    wait_until_accepting,
)
from emulator.mqtt import MqttConnectError, MqttError, open_mqtt

HAVE_MOSQUITTO = shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()
needs_mosquitto = pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto binary not installed")
BROKERS = ["embedded", pytest.param("mosquitto", marks=needs_mosquitto)]
RUN = "r-0123abcd"


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
    assert "amqtt" in " ".join(argv[:-2])  # the amqtt command or qnet's wrapper around it
    config = yaml.safe_load(Path(argv[-1]).read_text())
    assert config["listeners"]["default"]["bind"] == "127.0.0.1:12345"
    assert config["plugins"] == {
        "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}

    assert broker_command(BrokerSpec("external", "h", 1), 1, tmp_path) is None


@needs_mosquitto
def test_broker_command_mosquitto(tmp_path: Path) -> None:
    argv = broker_command(BrokerSpec("mosquitto"), 12345, tmp_path)
    assert argv is not None and Path(argv[0]).name == "mosquitto"
    lines = Path(argv[-1]).read_text().splitlines()
    assert "listener 12345 127.0.0.1" in lines
    assert "allow_anonymous true" in lines
    assert "persistence false" in lines


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_broker_command_with_accounts_embedded(tmp_path: Path) -> None:
    accounts = telemetry.credentials(RUN, ["alice"], ["alice-bob"])
    argv = broker_command(BrokerSpec("embedded"), 12345, tmp_path, accounts)
    assert argv is not None
    config = yaml.safe_load(Path(argv[-1]).read_text())
    plugins = config["plugins"]
    assert "amqtt.plugins.authentication.AnonymousAuthPlugin" not in plugins
    password_file = Path(plugins["amqtt.plugins.authentication.FileAuthPlugin"]["password_file"])
    users = dict(line.split(":", 1) for line in password_file.read_text().splitlines())
    assert set(users) == set(accounts)
    assert all(h.startswith("$argon2id$") for h in users.values())
    assert not any(a.password in password_file.read_text() for a in accounts.values())
    acl = plugins["amqtt.plugins.topic_checking.TopicAccessControlListPlugin"]
    assert acl["publish_acl"]["node.alice"] == [f"qnet/{RUN}/node/alice/#"]
    assert acl["acl"]["node.alice"] == [f"qnet/{RUN}/control/#"]
    assert private(Path(argv[-1])) and private(password_file)
    observer = json.loads((tmp_path / brokers.OBSERVER_FILE).read_text())
    assert observer == {"host": "127.0.0.1", "port": 12345, "username": "observer",
                        "password": accounts["observer"].password}
    assert private(tmp_path / brokers.OBSERVER_FILE)


def test_mosquitto_password_hash_format() -> None:
    # $7$: PBKDF2-HMAC-SHA512, as mosquitto_passwd writes it (checked here by recomputing).
    _, kind, rounds, salt, digest = brokers._pbkdf2_hash("s3cret").split("$")
    assert (kind, rounds) == ("7", "101")
    assert len(base64.b64decode(salt)) == 12
    expected = hashlib.pbkdf2_hmac("sha512", b"s3cret", base64.b64decode(salt), 101)
    assert base64.b64decode(digest) == expected


@needs_mosquitto
def test_broker_command_with_accounts_mosquitto(tmp_path: Path) -> None:
    accounts = telemetry.credentials(RUN, ["alice"], [])
    argv = broker_command(BrokerSpec("mosquitto"), 12345, tmp_path, accounts)
    assert argv is not None
    lines = Path(argv[-1]).read_text().splitlines()
    assert "allow_anonymous false" in lines
    acl = (tmp_path / "mosquitto.acl").read_text().splitlines()
    assert acl[acl.index("user node.alice") + 1] == f"topic write qnet/{RUN}/node/alice/#"
    assert all(private(tmp_path / f) for f in ("mosquitto.conf", "mosquitto.passwd",
                                               "mosquitto.acl"))


def test_account_names_with_separators_are_refused(tmp_path: Path) -> None:
    bad = {"x": telemetry.Account("node.a:b", "pw", (), ())}
    with pytest.raises(ValueError, match="no ':'"):
        broker_command(BrokerSpec("embedded"), 1, tmp_path, bad)


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


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


async def test_cancelled_during_startup_leaves_no_process(tmp_path: Path) -> None:
    with trio.move_on_after(0.05):
        async with open_broker("embedded", tmp_path, tmp_path / "broker.log"):
            await trio.sleep(10)  # amqtt needs > 0.1 s to start, so usually not reached
    assert (tmp_path / "amqtt.yaml").exists()  # it got as far as starting the broker
    assert processes_mentioning(str(tmp_path / "amqtt.yaml")) == []


# -- logins and ACLs on a running broker --------------------------------------------------------
@pytest.fixture(params=BROKERS)
async def secured(request, tmp_path: Path):
    accounts = telemetry.credentials(RUN, ["alice", "bob"], ["alice-bob"])
    async with open_broker(request.param, tmp_path, tmp_path / "broker.log",
                           accounts=accounts) as info:
        yield info, accounts
    assert info.pid is not None
    assert_gone(info.pid)


def login(info, account: telemetry.Account, client_id: str, password: str | None = None):
    return open_mqtt(info.host, info.port, client_id, username=account.username,
                     password=account.password if password is None else password,
                     connect_timeout=5)


async def next_message(mqtt, timeout: float = 5.0):
    with trio.fail_after(timeout):
        async for message in mqtt.messages():
            return message
    raise AssertionError("message iterator ended")


async def test_anonymous_and_wrong_passwords_are_refused(secured) -> None:
    info, accounts = secured
    with pytest.raises(MqttConnectError, match="refused"):
        async with open_mqtt(info.host, info.port, "anonymous", connect_timeout=5):
            pass
    with pytest.raises(MqttConnectError, match="refused"):
        async with login(info, accounts["node.alice"], "guess", password="guess"):
            pass
    with pytest.raises(MqttConnectError, match="refused"):  # bob's password is not alice's
        async with login(info, accounts["node.alice"], "swap",
                         password=accounts["node.bob"].password):
            pass


async def test_each_process_publishes_only_under_its_own_topics(secured) -> None:
    info, accounts = secured
    async with (
        login(info, accounts["orchestrator"], "orchestrator") as orchestrator,
        login(info, accounts["node.alice"], "alice") as alice,
        login(info, accounts["relay.alice-bob"], "relay") as relay,
        login(info, accounts["observer"], "observer") as observer,
    ):
        await orchestrator.subscribe(telemetry.run_filter(RUN), qos=1)
        forged = b'{"reason": "done"}'
        for topic in (telemetry.node_result(RUN, "bob"), telemetry.control_stop(RUN),
                      telemetry.relay_result(RUN, "alice-bob"), telemetry.daemon_result(RUN),
                      f"qnet/{RUN}/alice/result"):
            await alice.publish(topic, forged, qos=1)  # accepted on the wire, then dropped
        await relay.publish(telemetry.control_link(RUN, "alice-bob"), b'{"action":"cut"}', qos=1)
        await relay.publish(telemetry.node_metrics(RUN, "alice"), b"{}", qos=1)
        await observer.publish(telemetry.control_stop(RUN), b"{}", qos=1)  # read-only
        await observer.publish(telemetry.node_metrics(RUN, "alice"), b"{}", qos=1)
        # The broker keeps each client's order: had a forgery passed, it would come first.
        await alice.publish(telemetry.node_metrics(RUN, "alice"), b"marker-a", qos=1)
        await relay.publish(telemetry.relay_metrics(RUN, "alice-bob"), b"marker-r", qos=1)
        seen = {(await next_message(orchestrator)).payload for _ in range(2)}
        assert seen == {b"marker-a", b"marker-r"}
        with trio.move_on_after(0.3):
            extra = await next_message(orchestrator)
            raise AssertionError(f"unexpected message {extra}")


        # Nodes and relays hear control/ only: amqtt refuses a wider subscription, mosquitto
        # grants it but delivers only what the read ACL allows. Either way bob's result
        # never reaches alice, and the orchestrator's commands do.
        try:
            await alice.subscribe(telemetry.run_filter(RUN), qos=1)
        except MqttError as exc:
            assert "refused subscription" in str(exc)
            await alice.subscribe(telemetry.control_filter(RUN), qos=1)
        await relay.subscribe(telemetry.control_filter(RUN), qos=1)
        async with login(info, accounts["node.bob"], "bob") as bob:
            await bob.publish(telemetry.node_result(RUN, "bob"), b"bob only", qos=1)
        await orchestrator.publish(telemetry.control_stop(RUN), b"{}", qos=1)
        for listener in (alice, relay):
            message = await next_message(listener)
            assert (message.topic, message.payload) == (telemetry.control_stop(RUN), b"{}")
