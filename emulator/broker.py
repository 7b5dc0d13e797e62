"""Starting, checking and stopping the MQTT broker of a run (control and telemetry plane).

A scenario names its broker as ``"embedded"`` (an amqtt subprocess, the default: nothing to
install), ``"mosquitto"`` (the Debian package's binary, ~9x faster) or ``"mqtt://host:port"``
(a broker the user runs; qnet neither starts nor stops it). ``open_broker`` starts the broker
as a child process bound to 127.0.0.1 on a free port, waits until it completes a real MQTT
CONNECT/CONNACK round trip, and on exit stops it through ``emulator.supervise`` (SIGTERM,
grace, SIGKILL, wait; it dies with qnet even on ``kill -9``), so no broker outlives its context.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import msgspec
import trio

from emulator import telemetry
from emulator.mqtt import MqttError, open_mqtt
from emulator.supervise import Child, ChildFailed, running
from emulator.telemetry import Account

__all__ = [
    "BrokerError",
    "BrokerInfo",
    "BrokerSpec",
    "broker_command",
    "free_port",
    "open_broker",
    "parse_broker",
    "wait_until_accepting",
]

BrokerKind = Literal["embedded", "mosquitto", "external"]

TERMINATE_GRACE_S = 3.0
DEFAULT_READY_TIMEOUT_S = 10.0
_MOSQUITTO_FALLBACK = Path("/usr/sbin/mosquitto")
OBSERVER_FILE = "mqtt-observer.json"  # read-only login: host, port, username, password


class BrokerError(Exception):
    """The broker could not be started, or died while we waited for it to become ready."""


class BrokerSpec(msgspec.Struct, frozen=True):
    """Which broker to use; host/port are set only for an external broker."""

    kind: BrokerKind
    host: str | None = None
    port: int | None = None


class BrokerInfo(msgspec.Struct, frozen=True):
    """Where the broker of a run listens; ``pid`` is None for an external broker."""

    host: str
    port: int
    pid: int | None
    kind: BrokerKind


def parse_broker(spec: str) -> BrokerSpec:
    """Parse ``"embedded"``, ``"mosquitto"`` or ``"mqtt://host:port"``; ValueError otherwise."""
    text = spec.strip()
    if text in ("embedded", "mosquitto"):
        return BrokerSpec(kind=text)
    if "://" not in text:
        raise ValueError(
            f"broker {spec!r}: expected 'embedded', 'mosquitto' or 'mqtt://host:port'")
    parts = urlsplit(text)
    if parts.scheme != "mqtt":
        raise ValueError(f"broker {spec!r}: only the mqtt:// scheme is supported (no TLS)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"broker {spec!r}: expected exactly mqtt://host:port")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"broker {spec!r}: bad port ({exc})") from None
    if not parts.hostname:
        raise ValueError(f"broker {spec!r}: missing host")
    if port is None or port == 0:
        raise ValueError(f"broker {spec!r}: missing port (1-65535)")
    return BrokerSpec(kind="external", host=parts.hostname, port=port)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _amqtt_executable() -> str:
    beside = Path(sys.executable).parent / "amqtt"
    if beside.exists():
        return str(beside)
    found = shutil.which("amqtt")
    if found is None:
        raise BrokerError("embedded broker: the 'amqtt' command is not installed "
                          "(pip install amqtt) and was not found next to the Python interpreter")
    return found


def _mosquitto_executable() -> str:
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    if _MOSQUITTO_FALLBACK.exists():
        return str(_MOSQUITTO_FALLBACK)
    raise BrokerError("broker 'mosquitto': the mosquitto binary is not installed "
                      "(apt-get install mosquitto), or use broker = 'embedded'")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds credentials or names them)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with wider permissions
    with os.fdopen(fd, "w") as file:
        file.write(text)


def _argon2_hash(password: str) -> str:
    # Passwords are 192-bit random tokens, so a cheap argon2 setting loses nothing against
    # guessing and keeps broker start-up and each CONNECT in the millisecond range.
    import argon2

    return argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(password)


def _pbkdf2_hash(password: str) -> str:
    """mosquitto's ``$7$`` format: PBKDF2-HMAC-SHA512, 101 rounds, 12-byte salt, base64."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _amqtt_config(port: int, password_file: Path | None = None,
                  accounts: dict[str, Account] | None = None) -> str:
    """amqtt YAML (written as JSON, a YAML subset: ``#`` in topic filters needs no quoting).

    With accounts: password-file login (anonymous refused) and per-user publish and subscribe
    ACLs; without: anonymous access. Only auth and topic plugins: amqtt's default set adds
    $SYS publishing and per-packet logging, which cost throughput and add traffic.
    """
    if accounts is None:
        plugins: dict = {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                         {"allow_anonymous": True}}
    else:
        rules = telemetry.acl(accounts)
        plugins = {
            "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(password_file)},
            "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
                "publish_acl": rules["publish"], "acl": rules["subscribe"]},
        }
    config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
              "plugins": plugins}
    return json.dumps(config, indent=2) + "\n"


def _mosquitto_config(port: int, password_file: Path | None = None,
                      acl_file: Path | None = None) -> str:
    login = ("allow_anonymous true\n" if password_file is None else
             f"allow_anonymous false\npassword_file {password_file}\nacl_file {acl_file}\n")
    # Started as root, mosquitto would switch to user "mosquitto", which cannot read the 0600
    # credential files: it stays the user who runs qnet (the user's own privileges, no more).
    user = pwd.getpwuid(os.geteuid()).pw_name
    return (
        f"listener {port} 127.0.0.1\n"
        f"user {user}\n"
        f"{login}"
        # Larger packets than any telemetry payload may be are refused by the broker itself.
        f"max_packet_size {2 * telemetry.MAX_PAYLOAD_BYTES}\n"
        "persistence false\n"
        "log_dest stderr\n"
        "log_type error\n"
        "log_type warning\n"
        "log_type notice\n"
    )


def _mosquitto_acl(accounts: dict[str, Account]) -> str:
    lines = []
    for account in accounts.values():
        lines.append(f"user {account.username}")
        lines += [f"topic write {topic}" for topic in account.publish]
        lines += [f"topic read {topic}" for topic in account.subscribe]
        lines.append("")
    return "\n".join(lines)


def broker_command(spec: BrokerSpec, port: int, workdir: Path,
                   accounts: dict[str, Account] | None = None) -> list[str] | None:
    """Write the broker's config files into ``workdir`` and return its argv (None if external).

    ``accounts`` (from ``telemetry.credentials``) turn on login and ACLs; every file is 0600.
    The read-only observer login goes to ``OBSERVER_FILE`` for people watching the run.
    """
    if spec.kind == "external":
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    for account in (accounts or {}).values():
        if ":" in account.username or any(c.isspace() for c in account.username):
            raise ValueError(f"broker account {account.username!r}: no ':' or spaces allowed")
    observer = (accounts or {}).get(telemetry.OBSERVER)
    if observer is not None:
        _write_private(workdir / OBSERVER_FILE, json.dumps({
            "host": "127.0.0.1", "port": port, "username": observer.username,
            "password": observer.password}) + "\n")
    if spec.kind == "embedded":
        config = workdir / "amqtt.yaml"
        password_file = None
        if accounts is not None:
            password_file = workdir / "amqtt.passwd"
            _write_private(password_file, "".join(
                f"{a.username}:{_argon2_hash(a.password)}\n" for a in accounts.values()))
        _write_private(config, _amqtt_config(port, password_file, accounts))
        _amqtt_executable()  # installed? (a clear BrokerError if not)
        return [sys.executable, "-m", "emulator.amqtt_broker", "-c", str(config)]
    config = workdir / "mosquitto.conf"
    password_file = acl_file = None
    if accounts is not None:
        password_file, acl_file = workdir / "mosquitto.passwd", workdir / "mosquitto.acl"
        _write_private(password_file, "".join(
            f"{a.username}:{_pbkdf2_hash(a.password)}\n" for a in accounts.values()))
        _write_private(acl_file, _mosquitto_acl(accounts))
    _write_private(config, _mosquitto_config(port, password_file, acl_file))
    return [_mosquitto_executable(), "-c", str(config)]


async def _mqtt_round_trip(host: str, port: int, account: Account | None) -> None:
    login = {} if account is None else {"username": account.username,
                                        "password": account.password}
    async with open_mqtt(host, port, f"qnet-probe-{os.getpid()}", keepalive=5,
                         connect_timeout=2.0, **login):
        pass


async def wait_until_accepting(
    host: str, port: int, timeout: float, *, process: trio.Process | None = None,
    account: Account | None = None,
) -> None:
    """Return once a broker at host:port answers an MQTT CONNECT; TimeoutError otherwise.

    Retries every 20 ms while the port refuses connections (broker still starting); if the
    broker's ``process`` is given and exits meanwhile, raises BrokerError at once. The probe
    logs in with ``account`` when the broker requires a login.
    """
    last_error: BaseException | None = None
    ready = exited = False
    async with trio.open_nursery() as nursery:
        if process is not None:

            async def watch_exit() -> None:
                nonlocal exited
                await process.wait()
                exited = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_exit)
        with trio.move_on_after(timeout):
            while True:
                try:
                    await _mqtt_round_trip(host, port, account)
                    ready = True
                    break
                except (MqttError, OSError) as exc:
                    last_error = exc
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    if ready:
        return
    if exited:
        assert process is not None
        raise BrokerError(f"MQTT broker (pid {process.pid}) exited with code "
                          f"{process.returncode} before accepting connections on {host}:{port}")
    raise TimeoutError(f"MQTT broker at {host}:{port} did not accept an MQTT connection "
                       f"within {timeout:.1f} s (last error: {last_error})")


@asynccontextmanager
async def open_broker(
    spec: str, workdir: Path, log_path: Path, *, ready_timeout: float = DEFAULT_READY_TIMEOUT_S,
    accounts: dict[str, Account] | None = None,
) -> AsyncIterator[BrokerInfo]:
    """Run the broker named by ``spec`` for the duration of the context.

    The child's stdout and stderr go to ``log_path``. Raises BrokerError if it exits before
    it is ready, TimeoutError if it is not ready within ``ready_timeout`` seconds (it is then
    stopped). An external broker is only checked for readiness, never started or stopped.
    With ``accounts`` (``telemetry.credentials``) the broker refuses anonymous clients and
    applies their ACLs; the readiness probe logs in as the orchestrator.
    """
    parsed = parse_broker(spec)
    if parsed.kind == "external":
        assert parsed.host is not None and parsed.port is not None
        await wait_until_accepting(parsed.host, parsed.port, ready_timeout)
        yield BrokerInfo(host=parsed.host, port=parsed.port, pid=None, kind="external")
        return

    host = "127.0.0.1"
    port = free_port()
    argv = broker_command(parsed, port, workdir, accounts)
    probe = None if not accounts else accounts.get(telemetry.ORCHESTRATOR,
                                                   next(iter(accounts.values())))
    assert argv is not None

    async def accepting(child: Child) -> None:
        await wait_until_accepting(host, port, ready_timeout, account=probe)

    broker = Child(name="broker", role="broker", argv=argv, log_path=log_path,
                   ready_probe=accepting)
    started = time.monotonic()
    try:
        async with running(broker, ready_timeout=ready_timeout):
            ready_s = time.monotonic() - started
            async with await trio.Path(log_path).open("a") as note:
                await note.write(f"[qnet] {parsed.kind} broker pid {broker.pid} ready on "
                                 f"{host}:{port} after {ready_s:.3f} s\n")
            yield BrokerInfo(host=host, port=port, pid=broker.pid, kind=parsed.kind)
    except ChildFailed as exc:
        if exc.child is not broker:
            raise
        raise BrokerError(f"MQTT broker (pid {broker.pid}) {exc.reason} "
                          f"on {host}:{port}") from None
