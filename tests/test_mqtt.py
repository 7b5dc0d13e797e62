"""emulator.mqtt against real brokers: amqtt (embedded) and mosquitto, on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import trio
import trio.testing

from emulator.broker import (
    BrokerInfo,
    broker_command,
    free_port,
    open_broker,
    parse_broker,
    wait_until_accepting,
)
from emulator.mqtt import Message, MqttConnectError, MqttDisconnected, open_mqtt

HAVE_MOSQUITTO = shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()
BROKERS = [
    "embedded",
    pytest.param("mosquitto", marks=pytest.mark.skipif(
        not HAVE_MOSQUITTO, reason="mosquitto binary not installed")),
]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(params=BROKERS)
async def broker(request, tmp_path: Path) -> BrokerInfo:
    async with open_broker(request.param, tmp_path, tmp_path / "broker.log") as info:
        yield info
    assert info.pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(info.pid, 0)


@pytest.fixture(params=BROKERS)
async def killable_broker(request, tmp_path: Path) -> BrokerInfo:
    """A broker process outside any supervisor, for tests that kill it on purpose."""
    port = free_port()
    argv = broker_command(parse_broker(request.param), port, tmp_path)
    assert argv is not None
    with (tmp_path / "broker.log").open("wb") as log:
        process = await trio.lowlevel.open_process(argv, stdout=log, stderr=log)
    try:
        await wait_until_accepting("127.0.0.1", port, timeout=10)
        yield BrokerInfo("127.0.0.1", port, process.pid, request.param)
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()


async def next_message(mqtt, timeout: float = 5.0) -> Message:
    with trio.fail_after(timeout):
        async for message in mqtt.messages():
            return message
    raise AssertionError("message iterator ended")


async def test_qos1_round_trip_and_retained_for_late_subscriber(broker: BrokerInfo) -> None:
    async with (
        open_mqtt(broker.host, broker.port, "sub") as sub,
        open_mqtt(broker.host, broker.port, "pub") as pub,
    ):
        await sub.subscribe("qnet/t/#", qos=1)
        await pub.publish("qnet/t/status", b"up", qos=1, retain=True)
        live = await next_message(sub)
        assert (live.topic, live.payload) == ("qnet/t/status", b"up")
        assert live.retain is False  # live delivery of a retained publish (MQTT-3.3.1-9)
        await pub.publish("qnet/t/text", "héllo", qos=1)  # str payload is sent as UTF-8
        assert await next_message(sub) == Message("qnet/t/text", "héllo".encode(), False)

        async with open_mqtt(broker.host, broker.port, "late") as late:
            await late.subscribe("qnet/t/status", qos=1)
            stored = await next_message(late)
            assert stored == Message("qnet/t/status", b"up", True)


@pytest.mark.parametrize("qos", [0, 1])
async def test_thousand_messages_arrive_in_order(broker: BrokerInfo, qos: int) -> None:
    n = 1000
    async with (
        open_mqtt(broker.host, broker.port, "sub") as sub,
        open_mqtt(broker.host, broker.port, "pub") as pub,
    ):
        await sub.subscribe("qnet/seq", qos=qos)
        for i in range(n):
            await pub.publish("qnet/seq", i.to_bytes(4, "big"), qos=qos)
        received: list[int] = []
        with trio.fail_after(20):
            async for message in sub.messages():
                received.append(int.from_bytes(message.payload, "big"))
                if len(received) == n:
                    break
        assert received == list(range(n))
        assert sub.dropped == 0


async def test_slow_consumer_drops_oldest_and_counts(broker: BrokerInfo) -> None:
    n, keep = 50, 10
    async with (
        open_mqtt(broker.host, broker.port, "sub", max_buffered=keep) as sub,
        open_mqtt(broker.host, broker.port, "pub") as pub,
    ):
        await sub.subscribe("qnet/flood", qos=1)
        for i in range(n):
            await pub.publish("qnet/flood", str(i), qos=1)
        with trio.fail_after(10):
            while sub.dropped < n - keep:  # the network loop kept reading without a consumer
                await trio.sleep(0.01)
        payloads = [(await next_message(sub)).payload for _ in range(keep)]
        assert payloads == [str(i).encode() for i in range(n - keep, n)]
        assert sub.dropped == n - keep


async def test_will_published_on_abrupt_exit_not_on_clean_exit(broker: BrokerInfo) -> None:
    async with open_mqtt(broker.host, broker.port, "watcher") as watcher:
        await watcher.subscribe("qnet/node/#", qos=1)

        async with open_mqtt(broker.host, broker.port, "clean",
                             will=("qnet/node/clean", b"dead")):
            pass
        with pytest.raises(ValueError, match="app bug"):  # the body's error, not a group
            async with open_mqtt(broker.host, broker.port, "crash",
                                 will=("qnet/node/crash", b"dead")):
                raise ValueError("app bug")

        message = await next_message(watcher)
        assert message.topic == "qnet/node/crash"
        assert message.payload == b"dead"
        # Nothing from the clean client: a marker published afterwards comes next.
        await watcher.publish("qnet/node/marker", b"m", qos=1)
        assert (await next_message(watcher)).topic == "qnet/node/marker"


async def test_killed_broker_raises_disconnected_in_waiting_iterator(
    killable_broker: BrokerInfo,
) -> None:
    broker = killable_broker
    assert broker.pid is not None
    with trio.fail_after(5):
        with pytest.raises(MqttDisconnected):
            async with open_mqtt(broker.host, broker.port, "victim") as mqtt:
                await mqtt.subscribe("qnet/x", qos=1)
                os.kill(broker.pid, signal.SIGKILL)
                async for _ in mqtt.messages():
                    pass


async def test_killed_broker_cancels_body_and_raises_out_of_context(
    killable_broker: BrokerInfo,
) -> None:
    broker = killable_broker
    assert broker.pid is not None
    body_reached_end = False
    with trio.fail_after(5):
        with pytest.raises(MqttDisconnected):
            async with open_mqtt(broker.host, broker.port, "victim"):
                os.kill(broker.pid, signal.SIGKILL)
                await trio.sleep(60)  # not an MQTT call: the client must still notice
                body_reached_end = True
    assert not body_reached_end


async def test_hung_broker_detected_by_keepalive(killable_broker: BrokerInfo) -> None:
    info = killable_broker
    assert info.pid is not None
    try:
        # keepalive 1 s: PINGREQ after 1 s idle, dead after 1 s more without PINGRESP;
        # loop_misc runs every 1 s, so detection takes at most ~3 s.
        with trio.fail_after(4.5):
            with pytest.raises(MqttDisconnected, match="lost"):
                async with open_mqtt(info.host, info.port, "idle", keepalive=1):
                    os.kill(info.pid, signal.SIGSTOP)
                    await trio.sleep(60)
    finally:
        os.kill(info.pid, signal.SIGCONT)


async def test_connect_refused_raises_connect_error() -> None:
    port = free_port()  # nothing listens there
    with trio.fail_after(5):
        with pytest.raises(MqttConnectError, match=f"127.0.0.1:{port}"):
            async with open_mqtt("127.0.0.1", port, "nobody"):
                pass


async def test_silent_server_times_out_without_connack() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        with trio.fail_after(5):
            with pytest.raises(MqttConnectError, match="no CONNACK"):
                async with open_mqtt("127.0.0.1", port, "c", connect_timeout=0.3):
                    pass
    finally:
        listener.close()


async def test_closed_client_refuses_use(broker: BrokerInfo) -> None:
    async with open_mqtt(broker.host, broker.port, "c") as mqtt:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await mqtt.publish("qnet/x", b"")
    with pytest.raises(trio.ClosedResourceError):
        await mqtt.subscribe("qnet/x")
    with trio.fail_after(1):
        assert [m async for m in mqtt.messages()] == []


async def test_second_concurrent_consumer_is_refused(broker: BrokerInfo) -> None:
    async with open_mqtt(broker.host, broker.port, "c") as mqtt, trio.open_nursery() as nursery:
        nursery.start_soon(next_message, mqtt)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="another task"):
            await next_message(mqtt)
        nursery.cancel_scope.cancel()
