"""Faults during a run: the scenario's ``[[faults]]`` at their times, and ``qnet fault`` requests
at once; both applied the same way and recorded for result.json ``faults``.

A link fault is one ``LinkControl`` on ``control/link/<link>``: the relay applies its classical
plane, the daemon its quantum plane, and each reports what it did (``FaultEffect`` on
``relay/<link>/fault`` and ``daemon/fault``, kept as ``fault_effect`` events). With ``for_s``
a cut is restored and a degrade cleared that much later. A crash goes to the orchestrator's
``crash`` callback (SIGKILL through the supervisor; its ``node_down``/``node_restarted``
events are its effects).

``qnet fault`` publishes a ``FaultRequest`` on ``request/fault`` with the run's operator login
(``OPERATOR_FILE`` in the run folder: it may publish only there). The orchestrator checks it
like a scenario entry (``scenario.check_fault``), answers on ``control/fault_reply`` (same id;
``ok`` or the reason), then applies it at the current emulated time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from emulator import telemetry
from emulator.scenario import Fault, ScenarioError, check_fault
from emulator.telemetry import FaultReply, FaultRequest, LinkControl

if TYPE_CHECKING:
    from emulator.clock import EmulatedClock
    from emulator.mqtt import MqttClient
    from emulator.orchestrator import RunState
    from emulator.telemetry import Account

OPERATOR_FILE = "mqtt-operator.json"  # run id, broker and the operator login (qnet fault)
REQUEST_QUEUE = 64  # requests waiting for the run to start; more are refused

Crash = Callable[[Fault], Awaitable[None]]


def write_operator_file(run_dir: Path, run_id: str, host: str, port: int,
                        account: Account) -> Path:
    """The operator login for ``qnet fault``, readable by the run's user only (0600)."""
    path = run_dir / OPERATOR_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"run_id": run_id, "host": host, "port": port,
                   "username": account.username, "password": account.password}, fh)
        fh.write("\n")
    return path


def record(state: RunState, clock: EmulatedClock, t_start: float, fault: Fault,
           source: str) -> dict:
    """Add a fault to ``state.fault_log`` (result.json ``faults``) and to the events."""
    entry = {"at_s": round(clock.now() - t_start, 6), "action": fault.action,
             "target": fault.link or fault.node, "source": source, "t_emu": clock.now()}
    if fault.link is not None:
        entry["plane"] = fault.plane
    if fault.action == "degrade":
        entry.update(db=fault.db, loss=fault.loss)
    for key in ("for_s", "restart_after_s"):
        if getattr(fault, key) is not None:
            entry[key] = getattr(fault, key)
    state.fault_log.append(entry)
    if fault.link is not None:  # a crash records its own events (orchestrator._crash_node)
        state.events.append({"kind": "fault", "link": fault.link, "action": fault.action,
                             "plane": fault.plane, "source": source, "t_emu": clock.now()})
    return entry


async def apply(mqtt: MqttClient, state: RunState, clock: EmulatedClock, t_start: float,
                fault: Fault, crash: Crash, source: str = "scenario") -> None:
    """Apply ``fault`` now; with ``for_s``, undo a cut or a degrade that much later."""
    if fault.action == "crash":
        record(state, clock, t_start, fault, source)
        await crash(fault)
        return
    topic = telemetry.control_link(state.run_id, fault.link)
    control = LinkControl(fault.action, plane=fault.plane, db=fault.db, loss=fault.loss)
    record(state, clock, t_start, fault, source)
    await mqtt.publish(topic, telemetry.encode(control), qos=1)
    if fault.for_s is None or fault.action in ("corrupt", "restore"):
        return
    await clock.sleep_until(clock.now() + fault.for_s)
    undo = msgspec.structs.replace(fault, action="restore" if fault.action == "cut" else
                                   "degrade", db=0.0, loss=0.0, for_s=None)
    record(state, clock, t_start, undo, source)
    await mqtt.publish(topic, telemetry.encode(LinkControl(undo.action, plane=undo.plane)),
                       qos=1)


async def inject_scheduled(mqtt: MqttClient, state: RunState, clock: EmulatedClock,
                           t_start: float, crash: Crash) -> None:
    """Every ``[[faults]]`` entry at its emulated time (``at_s`` after the apps' start)."""
    async def one(fault: Fault) -> None:
        await clock.sleep_until(t_start + fault.at_s)
        await apply(mqtt, state, clock, t_start, fault, crash)

    async with trio.open_nursery() as nursery:
        for fault in state.scenario.faults:
            nursery.start_soon(one, fault)


def fault_of(request: FaultRequest, at_s: float, nodes: set[str], links: set[str]) -> Fault:
    """The ``Fault`` a request asks for, checked like a scenario entry (ScenarioError)."""
    target = {"node" if request.action == "crash" else "link": request.target}
    raw: dict[str, Any] = {"at_s": at_s, "action": request.action, **target,
                           "plane": request.plane, "db": request.db, "loss": request.loss,
                           "for_s": request.for_s, "restart_after_s": request.restart_after_s}
    try:
        fault = msgspec.convert(raw, Fault)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"fault: {exc}".replace("at `$.", "at `fault.")) from None
    check_fault(fault, "fault", nodes, links)
    return fault


async def serve_requests(mqtt: MqttClient, state: RunState, clock: EmulatedClock,
                         t_start: float, crash: Crash) -> None:
    """Answer and apply every ``qnet fault`` request (queued by ``collect``) until cancelled."""
    nodes = {n.name for n in state.scenario.nodes}
    links = {link.id for link in state.scenario.links}
    reply_topic = telemetry.control_fault_reply(state.run_id)
    async with trio.open_nursery() as nursery:
        async for request in state.fault_requests[1]:
            try:
                fault = fault_of(request, max(0.0, clock.now() - t_start), nodes - state.gone,
                                 links)
            except ScenarioError as exc:
                reply = FaultReply(request.id, ok=False, error=str(exc))
            else:
                reply = FaultReply(request.id, ok=True)
                nursery.start_soon(apply, mqtt, state, clock, t_start, fault, crash, "qnet fault")
            await mqtt.publish(reply_topic, telemetry.encode(reply), qos=1)


def faults_section(fault_log: list[dict], events: list[dict]) -> list[dict]:
    """result.json ``faults``: each applied fault with what the processes reported doing.

    A link fault's effects are the ``fault_effect`` events of its link and action from its
    time until the next fault of that link and action; a crash's are its node's down/restart
    events until its next crash."""
    rows = []
    for i, entry in enumerate(fault_log):
        later = [e["t_emu"] for e in fault_log[i + 1:]
                 if (e["target"], e["action"]) == (entry["target"], entry["action"])]
        until = min(later, default=float("inf"))
        effects = []
        for event in events:
            if not entry["t_emu"] - 1e-9 <= event.get("t_emu", -1.0) < until:
                continue
            if (event["kind"] == "fault_effect" and event.get("link") == entry["target"]
                    and event.get("action") == entry["action"]):
                effects.append(f"{event['process']}: {event['effect']}")
            elif entry["action"] == "crash" and event.get("node") == entry["target"] and \
                    event["kind"] in ("node_down", "node_restarted"):
                detail = (f"exit {event.get('exit_code')}" if event["kind"] == "node_down"
                          else f"pid {event.get('pid')}")
                at_s = event["t_emu"] - (entry["t_emu"] - entry["at_s"])  # after the start
                effects.append(f"{event['kind']} ({detail}) at {at_s:.3f} s")
        row = {k: v for k, v in entry.items() if k != "t_emu"}
        row["effect"] = "; ".join(effects) if effects else "no process reported an effect"
        rows.append(row)
    return rows
