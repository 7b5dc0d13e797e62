"""The node process: connects to daemon and broker, opens its sockets, runs its apps.

Lifecycle (each step a line in the node's log): bind TCP/UDP, connect to the daemon (token)
and to MQTT, subscribe to ``qnet/<run>/control/#``, write the ready file, wait for the
``control/start`` message (peers' relay endpoints, start and end times), run the apps of this
node in one nursery, publish the result entries (retained) and wait for ``control/stop``.
SIGTERM, SIGINT, a stop message or the orchestrator disappearing end the process cleanly.
"""

from __future__ import annotations

import json
import logging
import signal
import sys

import msgspec
import trio

from emulator.child_config import Endpoint, NodeConfig, child_arguments, read_config, write_ready
from emulator.clock import EmulatedClock
from emulator.mqtt import open_mqtt
from emulator.scenario import Scenario, app_kind
from emulator.supervise import watch_parent
from nodes.daemon_client import open_daemon
from nodes.registry import app_runner
from nodes.sdk import NodeContext, current_app
from nodes.transport import Transport

log = logging.getLogger("qnet.node")


class StartMessage(msgspec.Struct):
    """Payload of ``qnet/<run>/control/start``: per node, per peer, the relay endpoint to dial."""

    t_start: float
    t_end: float
    peers: dict[str, dict[str, Endpoint]]


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received signal %s, stopping", signal.Signals(signum).name)
            return


async def _run_apps(node: NodeContext) -> list[dict]:
    entries: list[dict] = []

    async def one(app) -> None:
        current_app.set(f"{app_kind(app)}:{app.a}-{app.b}")  # keys node.partial(...)
        entries.extend(await app_runner(app_kind(app))(node, app))

    async with trio.open_nursery() as nursery:
        for app in node.scenario.apps:
            if node.name in (app.a, app.b):
                nursery.start_soon(one, app)
    return entries


async def serve(config: NodeConfig, ready_file) -> None:
    scenario = msgspec.convert(config.scenario, Scenario)
    transport = Transport.for_node(config, scenario)
    endpoint = await transport.bind()
    control = f"qnet/{config.run_id}/control"
    async with (
        open_mqtt(config.mqtt.host, config.mqtt.port, f"{config.run_id}-{config.name}") as mqtt,
        open_daemon(config.daemon.host, config.daemon.port, config.name, config.token) as daemon,
        trio.open_nursery() as nursery,
    ):
        await mqtt.subscribe(f"{control}/#", qos=1)
        nursery.start_soon(transport.serve)
        node = NodeContext(
            name=config.name, run_id=config.run_id, seed=config.seed,
            clock=EmulatedClock(config.t0, config.time_scale), scenario=scenario,
            daemon=daemon, transport=transport, mqtt=mqtt,
        )
        write_ready(ready_file, **endpoint)
        log.info("ready: tcp %s udp %d", endpoint["tcp"], endpoint["udp"])
        stop = trio.Event()
        started = trio.Event()

        async def follow_control() -> None:
            async for message in mqtt.messages():
                if message.topic == f"{control}/start" and not started.is_set():
                    start = msgspec.json.decode(message.payload, type=StartMessage)
                    node.t_start, node.t_end = start.t_start, start.t_end
                    transport.peers = start.peers.get(config.name, {})
                    started.set()
                elif message.topic == f"{control}/stop":
                    stop.set()

        async def run_when_started() -> None:
            await started.wait()
            log.info("start: t_start=%.3f t_end=%.3f peers=%s", node.t_start, node.t_end,
                     sorted(transport.peers))
            entries = await _run_apps(node)
            payload = json.dumps({"node": config.name, "apps": entries,
                                  "counters": transport.counters()})
            await mqtt.publish(f"qnet/{config.run_id}/{config.name}/result", payload,
                               qos=1, retain=True)
            log.info("apps finished, result published")

        nursery.start_soon(follow_control)
        nursery.start_soon(run_when_started)
        async with trio.open_nursery() as waiters:
            async def first(fn) -> None:
                await fn()
                waiters.cancel_scope.cancel()
            waiters.start_soon(first, stop.wait)
            waiters.start_soon(first, _until_signal)
            waiters.start_soon(first, watch_parent)
        nursery.cancel_scope.cancel()


def main() -> None:
    args = child_arguments("qnet node process")
    config = read_config(args.config, NodeConfig)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s {config.name} %(levelname)s %(message)s")
    trio.run(serve, config, args.ready_file)


if __name__ == "__main__":
    main()
