"""The link relay's MQTT side: faults in, counters and measured traffic out.

* ``control/link/<name>`` (``LinkControl``): cut/restore/degrade of the classical plane (a
  ``quantum``-plane fault is the daemon's), corrupt; each applied one is reported as a
  ``FaultEffect`` on ``relay/<name>/fault``. ``control/stop`` ends the relay.
* ``relay/<name>/metrics`` every ``METRICS_INTERVAL_S`` (``RelayReport``, qos 0).
* ``relay/<name>/traffic`` every ``config.traffic_interval_s`` (the orchestrator sets
  ``TRAFFIC_INTERVAL_S`` for a link with Raman noise, else none: ``TrafficReport``, bytes
  delivered per direction in that window, in emulated seconds), which the daemon turns into
  the Raman noise on the link's quantum channel. Every ``TRAFFIC_INTERVAL_S`` the capture,
  if any, is flushed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from emulator import telemetry
from emulator.telemetry import FaultEffect, LinkControl, StopMessage, TelemetryDecoder

if TYPE_CHECKING:
    from emulator.relay import Relay

log = logging.getLogger("qnet.relay")

METRICS_INTERVAL_S = 1.0
TRAFFIC_INTERVAL_S = 0.25  # wall: the daemon's Raman noise follows the load this closely


async def control(relay: Relay, mqtt, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Subscribe to the control topics, then apply faults and stop as they arrive.

    Everything is decoded by ``TelemetryDecoder``; only this link's and the stop topic act.
    """
    run, name = relay.config.run_id, relay.config.name
    decoder = TelemetryDecoder(run)
    await mqtt.subscribe(telemetry.control_link(run, name), qos=1)
    await mqtt.subscribe(telemetry.control_stop(run), qos=1)
    task_status.started()
    async for message in mqtt.messages():
        before = decoder.rejected_total
        got = decoder.decode(message.topic, message.payload)
        if got is None:
            if before == 0 and decoder.rejected_total:  # log the first one only
                log.warning("link %s: dropped a control message on %s (%s)",
                            name, message.topic, ", ".join(decoder.rejected))
        elif isinstance(got.payload, StopMessage):
            relay.request_stop()
        elif isinstance(got.payload, LinkControl) and got.name == name:
            effect = relay.apply(got.payload)
            if effect is not None:
                report = FaultEffect(name, got.payload.action, got.payload.plane, effect,
                                     relay.now())
                await mqtt.publish(telemetry.relay_fault(run, name), telemetry.encode(report),
                                   qos=1)


async def publish_metrics(relay: Relay, mqtt) -> None:
    topic = telemetry.relay_metrics(relay.config.run_id, relay.config.name)
    deadline = trio.current_time()
    while True:
        deadline += METRICS_INTERVAL_S
        await trio.sleep_until(deadline)
        await mqtt.publish(topic, telemetry.encode(relay.report()), qos=0)


async def publish_traffic(relay: Relay, mqtt) -> None:
    """Bytes delivered per direction in each window (emulated seconds), when configured and
    connected; flush the capture, if any. Returns at once when there is neither."""
    interval = relay.config.traffic_interval_s if mqtt is not None else None
    if interval is None and relay.config.capture is None:
        return
    topic = telemetry.relay_traffic(relay.config.run_id, relay.config.name)
    c = relay.counters
    last, sent = trio.current_time(), (c.bytes_ab, c.bytes_ba)
    while True:
        await trio.sleep_until(last + (interval or TRAFFIC_INTERVAL_S))
        now = trio.current_time()
        report = telemetry.TrafficReport(window_s=(now - last) * relay.config.time_scale,
                                         bytes_ab=c.bytes_ab - sent[0],
                                         bytes_ba=c.bytes_ba - sent[1])
        last, sent = now, (c.bytes_ab, c.bytes_ba)
        if relay.capture is not None:
            relay.capture.flush()
        if interval is not None:
            await mqtt.publish(topic, telemetry.encode(report), qos=0)
