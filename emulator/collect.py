"""The orchestrator's side of the telemetry plane: collect what children report (and queue
``qnet fault`` requests for ``emulator.faults``), show progress.

Every received message goes through ``telemetry.TelemetryDecoder`` (bounded, typed by topic);
what fails, or names a node or link the scenario does not have, is dropped and counted in
``state.telemetry_rejected`` (reported in result.json). Results are kept as builtins so
``assemble`` writes them to result.json unchanged (every field, defaults included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from emulator import telemetry
from emulator.clock import EmulatedClock
from emulator.mqtt import MqttClient
from emulator.telemetry import (
    DaemonReport,
    FaultEffect,
    FaultRequest,
    NodeEvent,
    NodeMetrics,
    NodeResult,
    RelayReport,
    TelemetryDecoder,
    TrafficReport,
)

if TYPE_CHECKING:
    from emulator.orchestrator import RunState
    from emulator.supervise import Child

PROGRESS_REFRESH_S = 0.25


class RunFailed(Exception):
    """The run could not complete (a child failed, or results never came)."""

    def __init__(self, message: str, child: Child | None = None) -> None:
        super().__init__(message)
        self.child = child


def _store(state: RunState, got: telemetry.Decoded, nodes: set[str], links: set[str]) -> bool:
    """File one decoded message into ``state``; False if it names a stranger or is unexpected."""
    payload = got.payload
    if isinstance(payload, NodeResult | NodeMetrics | NodeEvent):
        if got.name not in nodes:
            return False
        if isinstance(payload, NodeResult):
            state.node_results[got.name] = msgspec.structs.asdict(payload)
        elif isinstance(payload, NodeMetrics):
            state.latest_metrics[f"{got.name}/{payload.link}"] = msgspec.structs.asdict(payload)
        else:
            state.events.append({"node": got.name, "kind": payload.kind, "t_emu": payload.t_emu,
                                 "wall": payload.wall, **payload.fields})
        return True
    if isinstance(payload, RelayReport):
        if got.name not in links:
            return False
        if got.leaf == "result":
            state.relay_results[got.name] = msgspec.structs.asdict(payload)
        return True
    if isinstance(payload, DaemonReport):
        state.daemon_reports[got.leaf] = msgspec.structs.asdict(payload)
        return True
    if isinstance(payload, TrafficReport):  # the daemon's Raman input; totals come on stop
        return got.name in links
    if isinstance(payload, FaultEffect):
        if got.subtree == "relay" and got.name != payload.link:
            return False
        state.events.append({"kind": "fault_effect", "process": got.subtree,
                             **msgspec.structs.asdict(payload)})
        return True
    if isinstance(payload, FaultRequest):
        try:
            state.fault_requests[0].send_nowait(payload)
        except trio.WouldBlock:
            return False
        return True
    return got.subtree == "control"  # our own control messages come back to us


async def collect(mqtt: MqttClient, state: RunState) -> None:
    """Route telemetry: node and relay results, daemon reports, metrics, events."""
    decoder = TelemetryDecoder(state.run_id)
    nodes = {n.name for n in state.scenario.nodes}
    links = {link.id for link in state.scenario.links}
    async for message in mqtt.messages():
        got = decoder.decode(message.topic, message.payload)
        if got is not None and not _store(state, got, nodes, links):
            decoder.rejected["unknown_sender"] += 1
        state.telemetry_rejected = dict(decoder.rejected)
        state.got_result.set()
        state.got_result = trio.Event()


async def wait_for(state: RunState, done: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``done()`` holds after some message arrived; RunFailed after ``timeout``."""
    with trio.move_on_after(timeout) as scope:
        while not done():
            await state.got_result.wait()
    if scope.cancelled_caught:
        raise RunFailed(f"timed out after {timeout:g} s waiting for {what}")


def process_counters(state: RunState, child: Child) -> dict[str, int] | None:
    """The counters a child reported in its result, for result.json's ``processes``."""
    if child.role == "node":
        return state.node_results.get(child.name, {}).get("counters")
    if child.role == "relay":
        report = state.relay_results.get(child.name.removeprefix("relay-"))
        if report is None:
            return None
        return {k: v for k, v in report.items() if isinstance(v, int)} | report.get("counters", {})
    if child.role == "daemon":
        report = state.daemon_reports.get("result")
        if report is None:
            return None
        flat = {k: v for k, v in report.items() if isinstance(v, int)}
        return flat | report.get("counters", {}) | {
            f"measurements.{node}": n for node, n in report.get("measurements", {}).items()}
    return None


def progress_status(latest_metrics: dict[str, dict]) -> str:
    """One line per link from the latest metrics: sifted bits, running QBER, secret bits."""
    parts = []
    for m in latest_metrics.values():
        if m.get("sifted_bits") is None:
            continue
        qber = "-" if m.get("qber") is None else f"{m['qber']:.3f}"
        text = f"{m.get('link')}: {m['sifted_bits']:,} sifted, QBER {qber}"
        if m.get("secret_bits") is not None:
            text += f", {m['secret_bits']:,} secret"
        parts.append(text)
    return "  ".join(parts)


async def show_progress(state: RunState, clock: EmulatedClock, t_start: float,
                        duration: float, console: Console, enabled: bool) -> None:
    """The progress bar until the end of the emulated duration (refreshed 4 times a second)."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed:.1f}/{task.total:.0f} s emulated"),
                  TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                  console=console, disable=not enabled, transient=False) as progress:
        task = progress.add_task(state.scenario.scenario.name, total=duration, status="")
        while clock.now() < t_start + duration:
            progress.update(task, completed=max(0.0, clock.now() - t_start),
                            status=progress_status(state.latest_metrics))
            await trio.sleep(PROGRESS_REFRESH_S)
        progress.update(task, completed=duration)
