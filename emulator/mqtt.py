"""MQTT client for the control and telemetry plane: paho-mqtt 2.x driven from trio.

paho's own network loop runs in a thread or under select(); here it runs inside the caller's
trio run instead, with no thread and no asyncio (DESIGN §9: trio-asyncio costs ~15x):

* paho encodes and decodes packets and keeps the MQTT session state; it writes straight to
  the non-blocking socket when a publish is made (one ``send`` per packet, no extra hop);
* a reader task waits with ``trio.lowlevel.wait_readable`` and calls ``loop_read`` until the
  kernel buffer is empty; a writer task flushes what the kernel did not accept
  (``want_write`` -> ``wait_writable`` -> ``loop_write``); a housekeeping task calls
  ``loop_misc`` every second for the keepalive (PINGREQ, and a dead broker detected after
  ``keepalive`` seconds without PINGRESP).

Usage::

    async with open_mqtt("127.0.0.1", 1883, "node-a", will=("demo/node-a/status", b"dead"),
                         username="node.a", password="...") as mqtt:
        await mqtt.subscribe("demo/control/#", qos=1)        # returns on SUBACK
        await mqtt.publish("demo/node-a/status", b"up", qos=1, retain=True)  # on PUBACK
        async for message in mqtt.messages():                   # Message(topic, payload, retain)
            ...

qnet's own topics and payloads are built only by ``emulator.telemetry``. This module opens and
ends the session (``open_mqtt``); the open session itself is ``emulator.mqtt_session``.

Semantics:

* ``open_mqtt`` returns once the broker's CONNACK accepted the session (clean session,
  MQTT 3.1.1; ``username``/``password`` when given); a refusal (bad credentials too), no answer within ``connect_timeout`` or a TCP failure raises
  ``MqttConnectError``.
* Received messages wait in a buffer of ``max_buffered`` messages (default 100 000) until
  ``messages()`` takes them, so a slow consumer never stalls the network loop; when the
  buffer is full the oldest message is dropped and ``dropped`` counts it. Messages that
  arrive before ``messages()`` is first iterated are kept. One consumer at a time (a second
  concurrent one gets RuntimeError). The buffer is a deque plus a trio ParkingLot rather
  than a memory channel, because dropping the *oldest* needs access to the front.
* ``publish`` with qos 0 returns once paho handed the packet to the kernel; if the kernel's
  send buffer is full it waits until the writer flushed it (backpressure, not an unbounded
  queue). qos 1 waits for PUBACK.
* The will (topic, payload) is published by the broker with qos 1 and retain=True when the
  connection dies without DISCONNECT, so it replaces a retained "up" status on that topic.
* Leaving the context normally, or by cancellation, sends DISCONNECT (the will is dropped),
  flushed for at most 1 s, and closes the socket. Leaving it by any other exception closes
  the socket without DISCONNECT, so the broker publishes the will: the process failed.
* If the broker goes away (connection reset or closed, or keepalive expired), the waiting
  calls raise ``MqttDisconnected`` and the context itself raises ``MqttDisconnected`` (the
  body is cancelled): a dead broker is an error, never a hang. There is no automatic
  reconnect; the orchestrator owns the broker and treats its loss as fatal.
* Using the client after the context closed raises ``trio.ClosedResourceError``.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from emulator.mqtt_session import (
    Message,
    MqttClient,
    MqttConnectError,
    MqttDisconnected,
    MqttError,
)

__all__ = [
    "Message",
    "MqttClient",
    "MqttConnectError",
    "MqttDisconnected",
    "MqttError",
    "open_mqtt",
]


def _single_leaf(group: BaseExceptionGroup) -> BaseException | None:
    """The one exception inside nested single-member groups, or None if there are several."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def open_mqtt(
    host: str,
    port: int,
    client_id: str,
    *,
    will: tuple[str, bytes | str] | None = None,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 30,
    connect_timeout: float = 10.0,
    max_buffered: int = 100_000,
) -> AsyncIterator[MqttClient]:
    """Open an MQTT 3.1.1 session and run its network loop for the duration of the context.

    Raises MqttConnectError if the session cannot be opened and MqttDisconnected (out of the
    context) if the broker goes away; see the module docstring for the exact semantics.
    """
    client = MqttClient(client_id, keepalive, max_buffered)
    client.configure(will, username, password)
    try:
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(connect_timeout) as connect_scope:
                    await client.start(host, port, nursery)
                if connect_scope.cancelled_caught:
                    raise MqttConnectError(
                        f"no CONNACK from MQTT broker {host}:{port} within {connect_timeout} s")
                client.check_connack(host, port)
                abrupt = False
                try:
                    yield client
                except trio.Cancelled:
                    raise
                except BaseException:
                    abrupt = True
                    raise
                finally:
                    await client.finish(abrupt=abrupt)
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # trio wraps even a single error in a group; callers want the error itself.
            leaf = _single_leaf(group)
            if leaf is None:
                raise
            unwrapped = leaf
        else:
            unwrapped = None
    finally:
        client.close()
    if unwrapped is not None:
        raise unwrapped  # outside the except block, so its own __context__ is kept
    if client.error is not None:
        # The loop cancelled the body because the broker went away.
        raise client.error
