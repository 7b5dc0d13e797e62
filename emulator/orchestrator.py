"""``qnet run``: the one place a scenario's names become processes, sockets and topics.

Order of a run: broker, then the quantum daemon, then every node (they bind their sockets,
connect to daemon and broker, and report ready), then one relay per classical link (told
each node's own endpoint), then ``control/start`` with every node's peer directory. Faults
are published on control topics at their times. After the duration, nodes finish their apps
and publish results; the orchestrator publishes ``control/stop``, collects the relays'
counters and leaves the supervisor nursery, which ends every child (SIGTERM, grace, SIGKILL).
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from emulator import broker as brokers
from emulator.child_config import (
    DaemonAddress,
    DaemonConfig,
    DaemonEntanglementLink,
    DaemonLink,
    Direction,
    Endpoint,
    MqttAddress,
    NodeConfig,
    RelayConfig,
    node_apps,
    node_view,
    write_config,
)
from emulator.clock import EmulatedClock
from emulator.mqtt import MqttClient, open_mqtt
from emulator.results import app_sections, check_expectations
from emulator.scenario import Link, Scenario, memory_of
from emulator.supervise import Child, ChildFailed, start_child

STARTUP_MARGIN_S = 0.3  # emulated apps start this long after control/start is sent
RESULT_TIMEOUT_S = 60.0
RELAY_RESULT_TIMEOUT_S = 5.0


class RunFailed(Exception):
    """The run could not complete (a child failed, or results never came)."""

    def __init__(self, message: str, child: Child | None = None) -> None:
        super().__init__(message)
        self.child = child


@dataclass
class RunOptions:
    broker: str = "embedded"
    run_dir: Path | None = None
    progress: bool = True


@dataclass
class RunState:
    scenario: Scenario
    run_id: str
    run_dir: Path
    t0: float
    children: list[Child] = field(default_factory=list)
    node_results: dict[str, dict] = field(default_factory=dict)
    relay_results: dict[str, dict] = field(default_factory=dict)
    latest_metrics: dict[str, dict] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    got_result: trio.Event = field(default_factory=trio.Event)

    def child(self, name: str, role: str, module: str, config=None) -> Child:
        argv = [sys.executable, "-m", module]
        ready = None
        if config is not None:
            config_path = self.run_dir / f"{name}.config.json"
            write_config(config_path, config)
            ready = self.run_dir / f"{name}.ready.json"
            argv += ["--config", str(config_path), "--ready-file", str(ready)]
        child = Child(name=name, role=role, argv=argv, log_path=self.run_dir / f"{name}.log",
                      ready_file=ready)
        self.children.append(child)
        return child


def make_run_dir(base: Path | None, name: str) -> Path:
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
        return base
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{stamp}-{name}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path("runs") / f"{stamp}-{name}-{suffix}"
    path.mkdir(parents=True)
    return path


def direction(link: Link) -> Direction:
    c = link.classical
    return Direction(
        delay_s=link.classical_delay_s, jitter_s=c.jitter_ms / 1000.0, loss=c.loss,
        rate_bps=c.rate_mbps * 1e6 if c.rate_mbps is not None else None,
    )


async def _collect(mqtt: MqttClient, state: RunState) -> None:
    """Route telemetry: node and relay results, metrics for the progress bar, events."""
    prefix = f"qnet/{state.run_id}/"
    async for message in mqtt.messages():
        parts = message.topic[len(prefix):].split("/")
        try:
            payload = json.loads(message.payload)
        except ValueError:
            continue
        if parts[0] == "relay" and parts[-1] == "result":
            state.relay_results[parts[1]] = payload
        elif parts[-1] == "result":
            state.node_results[parts[0]] = payload
        elif parts[-1] == "metrics":
            state.latest_metrics[parts[0]] = payload
        elif parts[-1] == "events":
            state.events.append(payload)
        state.got_result.set()
        state.got_result = trio.Event()


async def _wait_for(state: RunState, done, timeout: float, what: str) -> None:
    with trio.move_on_after(timeout) as scope:
        while not done():
            await state.got_result.wait()
    if scope.cancelled_caught:
        raise RunFailed(f"timed out after {timeout:g} s waiting for {what}")


async def _inject_faults(mqtt: MqttClient, state: RunState, clock: EmulatedClock,
                         t_start: float) -> None:
    async def one(fault) -> None:
        topic = f"qnet/{state.run_id}/control/link/{fault.link}"
        await clock.sleep_until(t_start + fault.at_s)
        await mqtt.publish(topic, json.dumps({"action": fault.action}), qos=1)
        state.events.append({"kind": "fault", "link": fault.link, "action": fault.action,
                             "t_emu": clock.now()})
        if fault.for_s is not None and fault.action != "corrupt":
            opposite = "restore" if fault.action == "cut" else "cut"
            await clock.sleep_until(t_start + fault.at_s + fault.for_s)
            await mqtt.publish(topic, json.dumps({"action": opposite}), qos=1)
            state.events.append({"kind": "fault", "link": fault.link, "action": opposite,
                                 "t_emu": clock.now()})

    async with trio.open_nursery() as nursery:
        for fault in state.scenario.faults:
            nursery.start_soon(one, fault)


async def _show_progress(state: RunState, clock: EmulatedClock, t_start: float,
                         duration: float, console: Console, enabled: bool) -> None:
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed:.1f}/{task.total:.0f} s emulated"),
                  TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                  console=console, disable=not enabled, transient=False) as progress:
        task = progress.add_task(state.scenario.scenario.name, total=duration, status="")
        while clock.now() < t_start + duration:
            status = "  ".join(
                f"{m.get('link')}: {m.get('sifted_bits', 0):,} sifted, QBER {m.get('qber', 0):.3f}"
                for m in state.latest_metrics.values() if "sifted_bits" in m)
            progress.update(task, completed=max(0.0, clock.now() - t_start), status=status)
            await trio.sleep(0.25)
        progress.update(task, completed=duration)


async def _start_all(nursery: trio.Nursery, children: list[Child]) -> None:
    """Start children concurrently; return when all are ready."""
    async with trio.open_nursery() as starting:
        for child in children:
            starting.start_soon(nursery.start, start_child, child)


async def execute(scenario: Scenario, options: RunOptions, console: Console) -> dict:
    """Run ``scenario`` to the end and return the raw material for result.json."""
    meta = scenario.scenario
    run_dir = make_run_dir(options.run_dir, meta.name)
    state = RunState(scenario=scenario, run_id=f"{meta.name}-{secrets.token_hex(4)}",
                     run_dir=run_dir, t0=time.time())
    clock = EmulatedClock(state.t0, meta.time_scale)
    wall_start = time.time()
    spec = brokers.parse_broker(options.broker)
    tokens = {node.name: secrets.token_hex(16) for node in scenario.nodes}
    link_keys: dict[str, dict[str, str]] = {node.name: {} for node in scenario.nodes}
    for link in scenario.links:  # one secret per link, known to its two ends only
        link_keys[link.a][link.b] = link_keys[link.b][link.a] = secrets.token_hex(32)

    async with trio.open_nursery() as children:
        # 1. broker
        if spec.kind == "external":
            host, port = spec.host, spec.port
        else:
            host, port = "127.0.0.1", brokers.free_port()
            argv = brokers.broker_command(spec, port, run_dir)
            broker = Child(name="broker", role="broker", argv=argv,
                           log_path=run_dir / "broker.log")
            state.children.append(broker)
            await children.start(start_child, broker)
        await brokers.wait_until_accepting(host, port, timeout=15.0)
        mqtt_address = MqttAddress(host, port)

        async with open_mqtt(host, port, f"{state.run_id}-orchestrator") as mqtt:
            await mqtt.subscribe(f"qnet/{state.run_id}/#", qos=1)
            children.start_soon(_collect, mqtt, state)

            # 2. quantum daemon
            daemon = state.child("daemon", "daemon", "emulator.daemon", DaemonConfig(
                run_id=state.run_id, t0=state.t0, time_scale=meta.time_scale, seed=meta.seed,
                tokens=tokens, mqtt=mqtt_address,
                links=[DaemonLink(link.id, link.a, link.b, link.length_km, link.quantum)
                       for link in scenario.links if link.quantum is not None],
                memories={n.name: memory_of(scenario, n.name) for n in scenario.nodes},
                entanglement_links=[
                    DaemonEntanglementLink(link.id, link.a, link.b, link.length_km,
                                           link.entanglement)
                    for link in scenario.links if link.entanglement is not None]))
            await children.start(start_child, daemon)

            # 3. nodes
            nodes = [state.child(n.name, "node", "nodes", NodeConfig(
                run_id=state.run_id, t0=state.t0, time_scale=meta.time_scale, seed=meta.seed,
                name=n.name, token=tokens[n.name], link_keys=link_keys[n.name],
                daemon=DaemonAddress("127.0.0.1", daemon.ready["port"]), mqtt=mqtt_address,
                view=node_view(scenario, n.name), apps=node_apps(scenario, n.name)))
                for n in scenario.nodes]
            await _start_all(children, nodes)
            ready = {c.name: c.ready for c in nodes}  # tcp: one listening port per peer

            def endpoint(node: str, peer: str) -> Endpoint:
                return Endpoint(tcp=ready[node]["tcp"][peer], udp=ready[node]["udp"])

            # 4. relays, one per classical link
            relays = [state.child(f"relay-{link.id}", "relay", "emulator.relay", RelayConfig(
                run_id=state.run_id, t0=state.t0, time_scale=meta.time_scale, seed=meta.seed,
                name=link.id, a=link.a, b=link.b, a_to_b=direction(link),
                b_to_a=direction(link),
                targets={"a": endpoint(link.a, link.b), "b": endpoint(link.b, link.a)},
                mqtt=mqtt_address)) for link in scenario.links]
            await _start_all(children, relays)
            peers: dict[str, dict[str, Endpoint]] = {n.name: {} for n in scenario.nodes}
            for link, relay in zip(scenario.links, relays):
                listen = relay.ready["listen"]
                peers[link.a][link.b] = msgspec.convert(listen["a"], Endpoint)
                peers[link.b][link.a] = msgspec.convert(listen["b"], Endpoint)

            # 5. go
            t_start = clock.now() + STARTUP_MARGIN_S * meta.time_scale
            t_end = t_start + meta.duration_s
            start = {"t_start": t_start, "t_end": t_end, "peers": msgspec.to_builtins(peers)}
            await mqtt.publish(f"qnet/{state.run_id}/control/start", json.dumps(start),
                               qos=1, retain=True)
            state.events.append({"kind": "start", "t_emu": t_start, "wall": time.time()})
            children.start_soon(_inject_faults, mqtt, state, clock, t_start)
            await _show_progress(state, clock, t_start, meta.duration_s, console,
                                 options.progress)

            # 6. results
            names = [n.name for n in scenario.nodes]
            await _wait_for(state, lambda: all(n in state.node_results for n in names),
                            RESULT_TIMEOUT_S + meta.duration_s,
                            "node results (" + ", ".join(
                                n for n in names if n not in state.node_results) + ")")
            emulated_s = clock.now() - t_start
            for child in state.children:
                child.expected_exit = True
            await mqtt.publish(f"qnet/{state.run_id}/control/stop", b"{}", qos=1)
            await _wait_for(state, lambda: len(state.relay_results) == len(relays),
                            RELAY_RESULT_TIMEOUT_S, "relay counters")
            await mqtt.publish(f"qnet/{state.run_id}/control/start", b"", qos=1, retain=True)
        children.cancel_scope.cancel()

    wall_s = time.time() - wall_start
    return assemble(state, wall_s, emulated_s)


def assemble(state: RunState, wall_s: float, emulated_s: float) -> dict:
    scenario = state.scenario
    entries = [e for r in state.node_results.values() for e in r.get("apps", [])]
    links = []
    for link in scenario.links:
        counters = state.relay_results.get(link.id, {})
        links.append({
            "name": link.id, "a": link.a, "b": link.b, "length_km": link.length_km,
            "classical": {k: counters.get(k) for k in ("bytes_ab", "bytes_ba", "messages",
                                                       "dropped")},
        })
    result = {
        "scenario": scenario.scenario.name,
        "seed": scenario.scenario.seed,
        "ok": True,
        "wall_s": wall_s,
        "emulated_s": emulated_s,
        "time_scale": scenario.scenario.time_scale,
        "run_dir": str(state.run_dir),
        "processes": [{"name": c.name, "role": c.role, "pid": c.pid, "exit_code": c.exit_code}
                      for c in state.children],
        "links": links,
        **app_sections(scenario, entries),
        "events": state.events,
    }
    result["expectations"] = check_expectations(result, scenario.expect)
    result["ok"] = all(e["ok"] for e in result["expectations"])
    return result


def first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first non-group exception inside ``group`` (what the user needs to read)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def run(scenario: Scenario, options: RunOptions, console: Console) -> tuple[int, dict | None]:
    """Run with Ctrl-C handling; returns (exit code, result or None)."""
    import signal

    interrupted = False
    result: dict | None = None
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        async def watch_sigint() -> None:
            nonlocal interrupted
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

        async def main() -> None:
            nonlocal result, failure
            try:
                result = await execute(scenario, options, console)
            except* (ChildFailed, RunFailed, OSError, brokers.BrokerError) as group:
                failure = first_leaf(group)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_sigint)
        nursery.start_soon(main)
    if interrupted:
        return 130, None
    if failure is not None:
        raise failure
    assert result is not None
    return (0 if result["ok"] else 1), result
