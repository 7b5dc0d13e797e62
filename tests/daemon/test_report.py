"""The daemon's report over MQTT: ``daemon/metrics`` each second with its connection counters,
and on ``control/stop`` a retained ``daemon/result`` (what result.json shows per process)."""

from __future__ import annotations

import time

import trio

from emulator.child_config import DaemonConfig, MqttAddress
from emulator.daemon import protocol as p
from emulator.daemon.server import serve
from emulator.mqtt import open_mqtt
from emulator.wire import HEADER, FramedStream
from tests.mqtt_helpers import next_payload

TOKENS = {"alice": "tok-alice"}


async def test_metrics_and_retained_result_on_stop(broker, nursery):
    config = DaemonConfig("r1", time.time(), 1.0, 1, dict(TOKENS), [],
                          mqtt=MqttAddress(broker.host, broker.port))
    async with open_mqtt(broker.host, broker.port, "test") as mqtt:
        await mqtt.subscribe("qnet/r1/daemon/#", qos=1)
        daemon = await nursery.start(serve, config)
        good = FramedStream(await trio.open_tcp_stream("127.0.0.1", daemon.port), p.MAX_FRAME)
        await good.send(p.encoder.encode(p.Hello(p.PROTOCOL_VERSION, "alice", "tok-alice")))
        assert isinstance(p.reply_decoder.decode(await good.receive()), p.Welcome)
        bad = await trio.open_tcp_stream("127.0.0.1", daemon.port)
        await bad.send_all(HEADER.pack(1 << 30))
        with trio.fail_after(5):
            while daemon.sessions.rejected() < 1:
                await trio.sleep(0.01)
        metrics = await next_payload(mqtt, "qnet/r1/daemon/metrics")
        assert metrics["connections"] == 2 and metrics["rejected_connections"] == 1
        assert metrics["bad_frames"] == 1 and metrics["counters"]["rejected_too_large"] == 1
        await mqtt.publish("qnet/r1/control/stop", b"{}", qos=1)
        result = await next_payload(mqtt, "qnet/r1/daemon/result")
        assert result["connections"] == 2 and result["counters"]["authenticated"] == 1
    async with open_mqtt(broker.host, broker.port, "late") as late:  # retained for late comers
        await late.subscribe("qnet/r1/daemon/result", qos=1)
        assert (await next_payload(late, "qnet/r1/daemon/result")) == result
    # the daemon keeps serving after stop (the orchestrator ends it with SIGTERM)
    await good.send(p.encoder.encode(p.StatsRequest(1)))
    assert isinstance(p.reply_decoder.decode(await good.receive()), p.Stats)
