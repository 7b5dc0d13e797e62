"""The node process: connects to daemon and broker, opens its sockets, runs its apps.

Lifecycle (each step a line in the node's log): bind TCP/UDP, connect to the daemon (token)
and to MQTT, subscribe to ``qnet/<run>/control/#``, write the ready file, wait for the
``control/start`` message (peers' relay endpoints, start and end times), run the apps of this
node in one nursery, publish the result entries (retained) and wait for ``control/stop``
(a node with a key service then publishes them again with its report at the run's end).
A node restarted after a crash (``config.restarted``) binds the ports of its first start, reads
the retained ``control/start`` and serves (key service, tunnel, transport) but runs no app.
Control messages are decoded by ``emulator.telemetry`` (bad ones dropped and counted); a stop
with reason ``abort`` first publishes the entries the apps recorded so far (``partial``).
SIGTERM, SIGINT, a stop message or the orchestrator disappearing end the process cleanly.
"""

from __future__ import annotations

import logging
import signal
import sys

import msgspec
import trio

from emulator import telemetry
from emulator.apps import entry_function, kinds
from emulator.child_config import NodeApp, NodeConfig, child_arguments, read_config, write_ready
from emulator.clock import EmulatedClock
from emulator.supervise import watch_parent
from emulator.telemetry import NodeResult, StartMessage, StopMessage, TelemetryDecoder
from nodes.daemon_client import open_daemon
from nodes.net.hybrid_shell import plane_for
from nodes.net.kernel_routes import follow_routes
from nodes.net.service import NetService
from nodes.sdk import NodeContext, current_app
from nodes.services.tunnel.service import TunnelService
from nodes.transport import Transport

log = logging.getLogger("qnet.node")


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received signal %s, stopping", signal.Signals(signum).name)
            return


async def _run_apps(node: NodeContext, apps: list[NodeApp]) -> list[dict]:
    """Run this node's apps concurrently; every entry is tagged with its app's index."""
    entries: list[dict] = []

    async def one(app: NodeApp) -> None:
        kind = kinds()[app.kind]
        current_app.set(f"{app.kind}:{app.index}")  # keys node.partial(...)
        spec = msgspec.convert(app.spec, kind.spec)
        for entry in await entry_function(kind)(node, spec):
            entries.append({**entry, "app": app.index})

    async with trio.open_nursery() as nursery:
        for app in apps:
            nursery.start_soon(one, app)
    return entries


async def serve(config: NodeConfig, ready_file) -> None:
    transport = Transport.for_node(config, config.view)
    ports = config.ports  # a restart binds the ports of the first start
    endpoint = await transport.bind(ports)
    tunnel = None
    if config.tunnel is not None:  # user programs' connections (nodes/services/tunnel)
        tunnel = TunnelService(config.name, transport, config.tunnel.routes,
                               config.tunnel.listen_port, config.host)
        endpoint["tunnel"] = await tunnel.bind(ports.tunnel if ports is not None else None)
    keys = None
    if config.kms is not None:  # key manager + ETSI 014 KME (nodes/services, docs/kms.md)
        from nodes.services.kme.node import KeyService  # HTTP stack: only where a KME runs

        keys = KeyService(config.name, config.kms, config.view, transport, config.link_keys,
                          config.host, config.time_scale)
    async with (
        telemetry.connect(config.mqtt, f"{config.run_id}-{config.name}") as mqtt,
        open_daemon(config.daemon.host, config.daemon.port, config.name, config.token) as daemon,
        trio.open_nursery() as nursery,
    ):
        await mqtt.subscribe(telemetry.control_filter(config.run_id), qos=1)
        nursery.start_soon(transport.serve)
        if keys is not None:
            endpoint["kme"] = await keys.bind(nursery)
        node = NodeContext(
            name=config.name, run_id=config.run_id, seed=config.seed,
            clock=EmulatedClock(config.t0, config.time_scale), view=config.view,
            daemon=daemon, transport=transport, mqtt=mqtt,
            keys=keys.keys if keys is not None else None,
            kme=keys.kme if keys is not None else None, tunnel=tunnel, services=nursery,
        )

        async def report_transport_faults() -> None:  # the first of each kind, as an event
            async for kind, message in transport.first_faults:
                await node.event("transport_fault", counter=kind, message=message[:300])

        nursery.start_soon(report_transport_faults)
        if config.routing is not None:  # the routed plane (nodes/net, docs/net.md)
            node.net = NetService.for_node(
                config, node.clock, lambda kind, fields: node.event(kind, **fields))
        write_ready(ready_file, **endpoint)
        log.info("ready: tcp %s udp %d", endpoint["tcp"], endpoint["udp"])
        stop = trio.Event()
        started = trio.Event()

        result_sent = trio.Event()
        decoder = TelemetryDecoder(config.run_id)

        sent: list = []  # (entries, partial) as published, again with the final reports

        async def publish_result(entries: list[dict], partial: bool, final: bool = False) -> None:
            """Publish the entries once; ``final`` (on control/stop) again, with the counters
            and services' reports at the run's end: [[nodes.run]] programs may still take keys
            after the apps."""
            if result_sent.is_set() != final:
                return
            result_sent.set()
            sent[:] = [entries, partial]
            counters = {**transport.counters(), "telemetry_rejected": decoder.rejected_total}
            if tunnel is not None:
                counters.update(tunnel.counters)
            if node.net is not None:
                counters.update(node.net.counters())
            services = {"kms": await keys.report()} if keys is not None else {}
            payload = NodeResult(node=config.name, apps=entries, counters=counters,
                                 partial=partial, services=services, final=final)
            await mqtt.publish(telemetry.node_result(config.run_id, config.name),
                               telemetry.encode(payload), qos=1, retain=True)

        async def follow_control() -> None:
            async for message in mqtt.messages():
                before = decoder.rejected_total
                got = decoder.decode(message.topic, message.payload)
                if got is None:
                    if before == 0 and decoder.rejected_total:  # log the first one only
                        log.warning("dropped a control message on %s (%s)", message.topic,
                                    ", ".join(decoder.rejected))
                    continue
                if isinstance(got.payload, StartMessage) and not started.is_set():
                    node.t_start, node.t_end = got.payload.t_start, got.payload.t_end
                    transport.peers = got.payload.peers.get(config.name, {})
                    started.set()
                elif isinstance(got.payload, StopMessage):
                    if got.payload.reason == "abort":
                        log.info("run aborted: publishing what the apps recorded so far")
                        await publish_result(node.partial_entries(), partial=True)
                    elif keys is not None and sent:  # the orchestrator waits for it
                        await publish_result(*sent, final=True)
                    stop.set()

        async def run_when_started() -> None:
            await started.wait()
            log.info("start: t_start=%.3f t_end=%.3f peers=%s", node.t_start, node.t_end,
                     sorted(transport.peers))
            if node.net is not None:  # before the apps, which may use it at once
                await nursery.start(node.net.run, transport.udp, lambda: transport.peers)
                if config.netns is not None:  # --netns: the kernel table follows routing
                    nursery.start_soon(follow_routes, node.net, config.netns, node.clock,
                                       lambda kind, fields: node.event(kind, **fields))
                if any(getattr(link, "flight", None) for link in node.view.links):
                    await plane_for(node)  # hybrid packets: a restarted router switches again
            if config.restarted:  # the apps' sessions ended when this node was killed
                log.info("restarted: serving until t_end without running the apps again")
                await node.clock.sleep_until(node.t_end)
                entries = []
            else:
                entries = await _run_apps(node, config.apps)
            await publish_result(entries, partial=False)
            log.info("apps finished, result published")

        async def tunnel_when_started() -> None:
            await started.wait()
            await tunnel.serve()

        nursery.start_soon(follow_control)
        nursery.start_soon(run_when_started)
        if tunnel is not None:
            nursery.start_soon(tunnel_when_started)
        if keys is not None:
            async def keys_when_started() -> None:
                await started.wait()
                await keys.serve_peers(node.event)

            nursery.start_soon(keys_when_started)
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
