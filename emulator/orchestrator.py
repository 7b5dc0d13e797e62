"""``qnet run``: the one place a scenario's names become processes, sockets and topics.

Order of a run: broker, then the quantum daemon, then every node (they bind their sockets,
connect to daemon and broker, and report ready), then one relay per classical link (told
each node's own endpoint), then ``control/start`` with every node's peer directory. Faults
are published on control topics at their times; a ``crash`` SIGKILLs a node (``_crash_node``). After the duration, nodes finish their apps
and publish results; the orchestrator publishes ``control/stop``, collects the relays'
counters and leaves the supervisor, which ends every child (nodes, then relays, then the
daemon, then the broker; SIGTERM, grace, SIGKILL). If a child dies mid-run, the survivors are
told to abort (``control/stop`` with reason ``abort``), their partial results are awaited
briefly, and the result (``ok: false`` with the failure) is still returned.

Timeouts count in the clock they are about: process start-up and post-processing in wall
seconds, protocol rounds after the end in emulated seconds (stretched by ``1/time_scale``).
"""

from __future__ import annotations

import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import trio
from rich.console import Console

from emulator import broker as brokers
from emulator import faults as run_faults
from emulator import telemetry
from emulator.child_config import (
    DaemonAddress,
    DaemonConfig,
    DaemonEntanglementLink,
    DaemonLink,
    Direction,
    Endpoint,
    MqttAddress,
    NodeConfig,
    NodePorts,
    RelayConfig,
    node_apps,
    node_view,
    read_config,
    write_config,
)
from emulator.clock import EmulatedClock
from emulator.collect import (
    RunFailed,
    collect,
    show_progress,
    wait_for,
)
from emulator.hybrid_config import FlightFibre
from emulator.mqtt import MqttError
from emulator.netns.node_plan import node_netns
from emulator.netns.setup import NODE_HOST, address_env, peer_endpoints, start_network
from emulator.outcome import assemble, failure_info, first_leaf, make_run_dir
from emulator.pki import kms_setup
from emulator.programs import kms_environment, program_children, tunnel_configs, wait_programs
from emulator.relay_telemetry import TRAFFIC_INTERVAL_S
from emulator.scenario import Fault, Link, Scenario, memory_of, routing_of
from emulator.supervise import Child, ChildFailed, Restart, Supervisor, open_supervisor

STARTUP_MARGIN_S = 0.3  # wall seconds between control/start and the apps' start
READY_TIMEOUT_S = 15.0  # wall: a process starting up
RESULT_TIMEOUT_S = 60.0  # wall: the apps' post-processing after the end
RESULT_EMULATED_S = 10.0  # emulated: final protocol rounds after the end
RELAY_RESULT_TIMEOUT_S = 5.0  # wall: relays and daemon answer control/stop at once, plus
RELAY_RESULT_PER_RELAY_S = 0.5  # per relay (5 s alone was too short for mesh-16 on embedded amqtt)
ABORT_RESULTS_S = 3.0  # wall: survivors' partial results after a failure
EXIT_LINGER_S = 3.0  # wall: nodes and relays exiting on control/stop before we signal them
FAILURE_SETTLE_S = 0.5  # wall: after a child died, for the failure of what it depended on
# Stop order, highest first: nobody loses what it depends on while it shuts down.
TIER_BROKER, TIER_DAEMON, TIER_RELAY, TIER_NODE, TIER_PROGRAM = 0, 1, 2, 3, 4


@dataclass
class RunOptions:
    broker: str = "embedded"
    run_dir: Path | None = None
    progress: bool = True
    netns: bool = False  # every node in its own network namespace, links as wires (--netns)
    capture_max_bytes: int | None = None  # --capture: each relay writes capture-<link>.pcapng


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
    daemon_reports: dict[str, dict] = field(default_factory=dict)  # "metrics"/"result"
    telemetry_rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    got_result: trio.Event = field(default_factory=trio.Event)
    failure: dict | None = None  # what ended the run early (None: it ran to the end)
    t_start: float = 0.0  # emulated time the apps started
    gone: set[str] = field(default_factory=set)  # nodes crashed for good (no result awaited)
    fault_log: list[dict] = field(default_factory=list)  # result.json faults (emulator.faults)
    fault_requests: tuple = field(default_factory=lambda: trio.open_memory_channel[
        telemetry.FaultRequest](run_faults.REQUEST_QUEUE))  # qnet fault, queued by collect

    def child(self, name: str, role: str, module: str, config=None,
              tier: int = TIER_NODE) -> Child:
        argv = [sys.executable, "-m", module]
        ready = None
        if config is not None:
            config_path = self.run_dir / f"{name}.config.json"
            write_config(config_path, config)
            ready = self.run_dir / f"{name}.ready.json"
            argv += ["--config", str(config_path), "--ready-file", str(ready)]
        child = Child(name=name, role=role, argv=argv, log_path=self.run_dir / f"{name}.log",
                      ready_file=ready, tier=tier)
        self.children.append(child)
        return child


def direction(link: Link) -> Direction:
    c = link.classical
    return Direction(
        delay_s=link.classical_delay_s, jitter_s=c.jitter_ms / 1000.0, loss=c.loss,
        delay_schedule=link.classical_delay_schedule(),
        rate_bps=c.rate_mbps * 1e6 if c.rate_mbps is not None else None,
    )


def _relay_options(run_dir: Path, link: Link, options: RunOptions) -> dict:
    """RelayConfig fields of ``--capture`` and of the traffic reports behind the Raman noise
    (only for a link with ``[links.quantum.raman]``: every report is broker load)."""
    out: dict = {}
    if options.capture_max_bytes is not None:
        out.update(capture=str(run_dir / f"capture-{link.id}.pcapng"),
                   capture_max_bytes=options.capture_max_bytes)
    if link.quantum is not None and link.quantum.raman is not None:
        out["traffic_interval_s"] = TRAFFIC_INTERVAL_S
    return out


async def _crash_node(state: RunState, clock: EmulatedClock, fault: Fault) -> None:
    """SIGKILL ``fault.node``'s process. With ``restart_after_s`` its supervisor starts it again
    that much later (same config plus the ports of its first start and ``restarted``), else the
    run goes on without it. The fault, the exit and the restart are events."""
    child = next(c for c in state.children if c.role == "node" and c.name == fault.node)
    process = child.process
    event = {"kind": "fault", "action": "crash", "node": child.name,
             "restart_after_s": fault.restart_after_s}
    if process is None or process.returncode is not None:
        state.events.append({**event, "effect": "not running", "t_emu": clock.now()})
        return
    if fault.restart_after_s is None:
        child.expected_exit = True  # not a failure: the run planned it
        state.gone.add(child.name)
    else:
        path = state.run_dir / f"{child.name}.config.json"
        ports = NodePorts(tcp=child.ready["tcp"], udp=child.ready["udp"],
                          tunnel=child.ready.get("tunnel"))
        write_config(path, msgspec.structs.replace(read_config(path, NodeConfig), ports=ports,
                                                   restarted=True))
        wall_s = clock.wall_duration(fault.restart_after_s)
        child.restart = Restart("on-failure", max_restarts=child.restarts + 1,
                                backoff_s=wall_s / 2 ** child.restarts)  # the backoff doubles

        def restarted(again: Child) -> None:
            state.events.append({"kind": "node_restarted", "node": again.name, "pid": again.pid,
                                 "t_emu": clock.now()})

        child.on_ready = restarted
    process.send_signal(signal.SIGKILL)
    state.events.append({**event, "pid": process.pid, "t_emu": clock.now()})
    code = await process.wait()
    state.events.append({"kind": "node_down", "node": child.name, "exit_code": code,
                         "t_emu": clock.now()})


async def _abort(mqtt, state: RunState, supervisor: Supervisor) -> None:
    """Tell the survivors to abort, wait briefly for their (partial) results and the
    surviving relays' counters, then for them to exit (they end on the abort)."""
    alive = [c for c in state.children if c.process is not None
             and c.process.returncode is None]
    survivors = [c.name for c in alive if c.role == "node"]
    relays = [c.name.removeprefix("relay-") for c in alive if c.role == "relay"]
    supervisor.expect_exits()
    with trio.move_on_after(ABORT_RESULTS_S):
        try:
            await mqtt.publish(telemetry.control_stop(state.run_id),
                               telemetry.encode(telemetry.StopMessage(reason="abort")), qos=1)
        except (MqttError, OSError):
            return  # the broker is gone: nobody can report any more
        while not (all(name in state.node_results for name in survivors)
                   and all(name in state.relay_results for name in relays)):
            await state.got_result.wait()
    await supervisor.wait_exits([c for c in alive if c.role in ("node", "relay")],
                                EXIT_LINGER_S)


async def _fail_on_child_exit(supervisor: Supervisor, phases: trio.CancelScope) -> None:
    await supervisor.failed.wait()
    await supervisor.settle_failures(FAILURE_SETTLE_S)  # before the stop makes exits expected
    phases.cancel()


async def execute(scenario: Scenario, options: RunOptions, console: Console) -> dict:
    """Run ``scenario`` to the end and return the raw material for result.json."""
    meta = scenario.scenario
    run_dir = make_run_dir(options.run_dir, meta.name)
    state = RunState(scenario=scenario, run_id=f"{meta.name}-{secrets.token_hex(4)}",
                     run_dir=run_dir, t0=time.monotonic())
    clock = EmulatedClock(state.t0, meta.time_scale)
    wall_start = time.monotonic()
    emulated_s = 0.0
    spec = brokers.parse_broker(options.broker)
    tokens = {node.name: secrets.token_hex(16) for node in scenario.nodes}
    link_keys: dict[str, dict[str, str]] = {node.name: {} for node in scenario.nodes}
    for link in scenario.links:  # one secret per link, known to its two ends only
        link_keys[link.a][link.b] = link_keys[link.b][link.a] = secrets.token_hex(32)
    for i, app in enumerate(scenario.apps):  # a published default secret authenticates nothing
        psk = [f for f in msgspec.structs.fields(app) if f.name == "psk"]
        if psk and app.psk == psk[0].default:
            console.print(f"[yellow]warning:[/] apps[{i}] ({type(app).__struct_config__.tag}) "
                          "keeps the default psk, a public secret: its classical messages are "
                          f"not authenticated against anyone who reads qnet (set apps.{i}.psk)")
    # One broker login per process (none on an external broker: it is the user's).
    accounts = None if spec.kind == "external" else telemetry.credentials(
        state.run_id, [n.name for n in scenario.nodes], [link.id for link in scenario.links])

    async with open_supervisor(raise_failures=False) as supervisor:
        try:
            # 1. broker
            if spec.kind == "external":
                host, port = spec.host, spec.port
            else:
                host, port = "127.0.0.1", brokers.free_port()
                argv = brokers.broker_command(spec, port, run_dir, accounts)

                async def broker_ready(child: Child) -> None:
                    await brokers.wait_until_accepting(
                        host, port, timeout=READY_TIMEOUT_S,
                        account=None if accounts is None else accounts[telemetry.ORCHESTRATOR])

                broker = Child(name="broker", role="broker", argv=argv, tier=TIER_BROKER,
                               log_path=run_dir / "broker.log", ready_probe=broker_ready)
                state.children.append(broker)
                await supervisor.start(broker, ready_timeout=READY_TIMEOUT_S)
                if accounts is not None:  # `qnet fault RUN_DIR ...` logs in with this
                    run_faults.write_operator_file(run_dir, state.run_id, host, port,
                                                   accounts[telemetry.OPERATOR])

            def mqtt_address(user: str) -> MqttAddress:
                if accounts is None:
                    return MqttAddress(host, port)
                return MqttAddress(host, port, accounts[user].username, accounts[user].password)

            if spec.kind == "external":
                await brokers.wait_until_accepting(host, port, timeout=READY_TIMEOUT_S)

            async with (
                telemetry.connect(mqtt_address(telemetry.ORCHESTRATOR),
                                  f"{state.run_id}-orchestrator") as mqtt,
                trio.open_nursery() as background,
            ):
                await mqtt.subscribe(telemetry.run_filter(state.run_id), qos=1)
                background.start_soon(collect, mqtt, state)
                with trio.CancelScope() as phases:
                    background.start_soon(_fail_on_child_exit, supervisor, phases)
                    try:
                        emulated_s = await _phases(supervisor, state, mqtt, mqtt_address, clock,
                                                   options, console, tokens, link_keys)
                    except* (ChildFailed, RunFailed) as group:
                        state.failure = failure_info(first_leaf(group))
                if supervisor.failures:
                    state.failure = failure_info(supervisor.root_failure())
                if state.failure is not None:
                    if state.t_start:  # the apps had started
                        emulated_s = max(0.0, clock.now() - state.t_start)
                    await _abort(mqtt, state, supervisor)
                background.cancel_scope.cancel()
        except* (ChildFailed, RunFailed, brokers.BrokerError, TimeoutError, MqttError,
                 OSError) as group:
            if state.failure is None:
                state.failure = failure_info(first_leaf(group))
        if supervisor.failures:  # a dead child explains the errors that followed it
            state.failure = failure_info(supervisor.root_failure())

    wall_s = time.monotonic() - wall_start
    return assemble(state, wall_s, emulated_s)


async def _phases(supervisor: Supervisor, state: RunState, mqtt, mqtt_address, clock,
                  options: RunOptions, console: Console, tokens: dict[str, str],
                  link_keys: dict[str, dict[str, str]]) -> float:
    """Daemon, nodes, relays, go, results; returns the emulated seconds the run lasted."""
    scenario, meta = state.scenario, state.scenario.scenario
    # 2. quantum daemon
    daemon = state.child("daemon", "daemon", "emulator.daemon", DaemonConfig(
        run_id=state.run_id, t0=state.t0, time_scale=meta.time_scale, seed=meta.seed,
        tokens=tokens, mqtt=mqtt_address(telemetry.DAEMON),
        links=[DaemonLink(link.id, link.a, link.b, link.length_km, link.quantum)
               for link in scenario.links if link.quantum is not None],
        memories={n.name: memory_of(scenario, n.name) for n in scenario.nodes},
        clocks={n.name: n.clock.detuning_hz for n in scenario.nodes if n.clock is not None},
        entanglement_links=[
            DaemonEntanglementLink(link.id, link.a, link.b, link.length_km,
                                   link.entanglement)
            for link in scenario.links if link.entanglement is not None],
        flight_fibres=[FlightFibre(link.id, link.a, link.b, link.length_km, link.flight)
                       for link in scenario.links if link.flight is not None],
        hybrid={n.name: n.hybrid for n in scenario.nodes if n.hybrid is not None}), tier=TIER_DAEMON)
    await supervisor.start(daemon, ready_timeout=READY_TIMEOUT_S)

    # 2b. --netns: a namespace per node, a wire per link, static routes (emulator/netns)
    netns: dict[str, tuple[str, str]] | None = None  # node -> (network, PID namespace)
    if options.netns:
        broker = mqtt_address(telemetry.ORCHESTRATOR)
        plan, netns, relays = await start_network(
            supervisor, state, [daemon.ready["port"], broker.port], direction, mqtt_address,
            TIER_RELAY, READY_TIMEOUT_S, capture=options.capture_max_bytes is not None,
            capture_max_bytes=options.capture_max_bytes or 100_000_000)

    # 3. nodes (with tunnels for their programs, if any node runs one)
    tunnels = tunnel_configs(scenario)
    kms = kms_setup(scenario, state.run_dir, brokers.free_port)  # PKI + KMEs, if any SAE
    if kms is not None:
        console.print(f"key service: ETSI GS QKD 014 KMEs (certificates and these lines in "
                      f"{kms.pki.directory}/README.txt)", markup=False, highlight=False)
        for line in kms.lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    nodes = [state.child(n.name, "node", "nodes", NodeConfig(
        run_id=state.run_id, t0=state.t0, time_scale=meta.time_scale, seed=meta.seed,
        name=n.name, token=tokens[n.name], link_keys=link_keys[n.name],
        daemon=DaemonAddress("127.0.0.1", daemon.ready["port"]), mqtt=mqtt_address(telemetry.node_user(n.name)),
        view=node_view(scenario, n.name), apps=node_apps(scenario, n.name),
        tunnel=tunnels.get(n.name), kms=kms.nodes[n.name] if kms is not None else None,
        routing=routing_of(scenario), host=NODE_HOST if netns else "127.0.0.1",
        netns=node_netns(plan, n.name) if netns and routing_of(scenario) is not None else None))
        for n in scenario.nodes]
    for node in nodes:
        node.netns = netns[node.name][0] if netns else None
    await supervisor.start_all(nodes, ready_timeout=READY_TIMEOUT_S)
    ready = {c.name: c.ready for c in nodes}  # tcp: one listening port per peer

    def endpoint(node: str, peer: str) -> Endpoint:
        return Endpoint(tcp=ready[node]["tcp"][peer], udp=ready[node]["udp"])

    # 4. relays, one per classical link (with --netns the wires carry the links)
    if netns:
        peers = peer_endpoints(plan, scenario.links, ready)
    else:
        relays = [state.child(f"relay-{link.id}", "relay", "emulator.relay", RelayConfig(
            run_id=state.run_id, t0=state.t0, time_scale=meta.time_scale, seed=meta.seed,
            name=link.id, a=link.a, b=link.b, a_to_b=direction(link),
            b_to_a=direction(link),
            targets={"a": endpoint(link.a, link.b), "b": endpoint(link.b, link.a)},
            mqtt=mqtt_address(telemetry.relay_user(link.id)),
            **_relay_options(state.run_dir, link, options)), tier=TIER_RELAY)
            for link in scenario.links]
        await supervisor.start_all(relays, ready_timeout=READY_TIMEOUT_S)
        peers: dict[str, dict[str, Endpoint]] = {n.name: {} for n in scenario.nodes}
        for link, relay in zip(scenario.links, relays):
            listen = relay.ready["listen"]
            peers[link.a][link.b] = msgspec.convert(listen["a"], Endpoint)
            peers[link.b][link.a] = msgspec.convert(listen["b"], Endpoint)

    # 5. go
    t_start = state.t_start = clock.now() + STARTUP_MARGIN_S * meta.time_scale
    t_end = t_start + meta.duration_s
    start = telemetry.StartMessage(t_start=t_start, t_end=t_end, peers=peers)
    await mqtt.publish(telemetry.control_start(state.run_id), telemetry.encode(start),
                       qos=1, retain=True)
    state.events.append({"kind": "start", "t_emu": t_start, "wall": time.time()})
    programs = program_children(scenario, state.run_dir, tunnels, ready, TIER_PROGRAM,
                                kms_environment(kms, scenario), netns,
                                (lambda node: address_env(plan, node)) if netns else None)
    state.children += programs
    for program in programs:  # [[nodes.run]]: supervised, their exits are not failures
        await supervisor.start(program, ready_timeout=READY_TIMEOUT_S)
    async with trio.open_nursery() as faults:
        faults.start_soon(run_faults.serve_requests, mqtt, state, clock, t_start,
                          lambda fault: _crash_node(state, clock, fault))
        faults.start_soon(run_faults.inject_scheduled, mqtt, state, clock, t_start,
                          lambda fault: _crash_node(state, clock, fault))
        await show_progress(state, clock, t_start, meta.duration_s, console,
                            options.progress)

        # 6. results
        names = [n.name for n in scenario.nodes if n.name not in state.gone]
        await wait_for(state, lambda: all(n in state.node_results for n in names),
                       RESULT_TIMEOUT_S + clock.wall_duration(RESULT_EMULATED_S),
                       "node results (" + ", ".join(
                           n for n in names if n not in state.node_results) + ")")
        faults.cancel_scope.cancel()
    await wait_programs(scenario, programs)
    emulated_s = clock.now() - t_start
    supervisor.expect_exits()
    await mqtt.publish(telemetry.control_stop(state.run_id),
                       telemetry.encode(telemetry.StopMessage()), qos=1)
    # The daemon's final report is awaited only from a daemon that reported live; nodes with
    # a key service re-publish their result with its report at the end (nodes/runtime.py).
    await wait_for(state, lambda: len(state.relay_results) == len(relays) and (
        "metrics" not in state.daemon_reports or "result" in state.daemon_reports) and all(
        r.get("final") for n, r in state.node_results.items()
        if r.get("services") and n not in state.gone),
        RELAY_RESULT_TIMEOUT_S + RELAY_RESULT_PER_RELAY_S * len(relays),
        "relay and daemon counters, key services' final reports")
    await mqtt.publish(telemetry.control_start(state.run_id), b"", qos=1, retain=True)
    # nodes and relays end on control/stop; the daemon and broker are stopped by signal
    await supervisor.wait_exits([*nodes, *relays], EXIT_LINGER_S)
    return emulated_s


async def run(scenario: Scenario, options: RunOptions, console: Console) -> tuple[int, dict | None]:
    """Run with Ctrl-C handling; returns (exit code, result or None).

    0 every expectation holds, 1 one failed, 3 a process failed (the result says which and
    what the others reported), 130 interrupted (SIGINT or SIGTERM; every child stopped)."""
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
    if result.get("failure") is not None:
        return 3, result
    return (0 if result["ok"] else 1), result
