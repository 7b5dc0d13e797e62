"""``qnet fault``'s client: ask a running run's orchestrator for a fault over MQTT and wait for
its answer (``emulator.faults`` is the other end).

The run folder's ``mqtt-operator.json`` names the run, its broker and a login that may only
publish ``request/fault`` (and read ``control/``). The request is checked here for what needs
no scenario (action, plane, numbers), then by the orchestrator against the scenario (names).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import msgspec
import trio

from emulator import telemetry
from emulator.child_config import MqttAddress
from emulator.faults import OPERATOR_FILE, fault_of
from emulator.mqtt import MqttError
from emulator.scenario import ScenarioError
from emulator.telemetry import FaultReply, FaultRequest

REPLY_TIMEOUT_S = 5.0  # wall: the orchestrator answers at once while the run is on


class FaultRefused(Exception):
    """The fault is invalid (here or by the orchestrator's check): exit 2."""


class RunUnreachable(Exception):
    """No running run answers: its broker is gone or the orchestrator did not reply: exit 1."""


def request_of(action: str, target: str, **options) -> FaultRequest:
    """A checked request (FaultRefused with the reason)."""
    try:
        request = msgspec.convert({"id": secrets.token_hex(8), "action": action,
                                   "target": target, **options}, FaultRequest)
        fault_of(request, 0.0, {target}, {target})  # all but the names (the run checks them)
    except (msgspec.ValidationError, ScenarioError) as exc:
        raise FaultRefused(str(exc)) from None
    return request


def operator_login(run_dir: Path) -> dict:
    path = run_dir / OPERATOR_FILE
    if (run_dir / "result.json").exists():
        raise RunUnreachable(f"{run_dir}: the run has ended (result.json is there)")
    try:
        login = json.loads(path.read_text())
        return {k: login[k] for k in ("run_id", "host", "port", "username", "password")}
    except FileNotFoundError:
        raise FaultRefused(f"{path}: not found (not a run folder, or a run on an external "
                           "broker, which has no operator login)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FaultRefused(f"{path}: unreadable ({exc})") from None


async def _ask(login: dict, request: FaultRequest) -> FaultReply:
    address = MqttAddress(login["host"], login["port"], login["username"], login["password"])
    run = login["run_id"]
    decoder = telemetry.TelemetryDecoder(run)
    try:
        async with telemetry.connect(address, f"{run}-fault-{request.id}") as mqtt:
            await mqtt.subscribe(telemetry.control_fault_reply(run), qos=1)
            await mqtt.publish(telemetry.request_fault(run), telemetry.encode(request), qos=1)
            with trio.move_on_after(REPLY_TIMEOUT_S):
                async for message in mqtt.messages():
                    got = decoder.decode(message.topic, message.payload)
                    if got is not None and isinstance(got.payload, FaultReply) \
                            and got.payload.id == request.id:
                        return got.payload
    except (OSError, MqttError) as exc:
        raise RunUnreachable(f"the run is not running (broker {login['host']}:"
                             f"{login['port']}: {exc})") from None
    raise RunUnreachable(f"the orchestrator did not answer within {REPLY_TIMEOUT_S:g} s "
                         "(the run may be ending)")


def send_fault(run_dir: Path, action: str, target: str, **options) -> None:
    """Ask the run in ``run_dir`` for a fault; FaultRefused or RunUnreachable if not applied."""
    request = request_of(action, target, **options)
    login = operator_login(run_dir)
    reply = trio.run(_ask, login, request)
    if not reply.ok:
        raise FaultRefused(reply.error)
