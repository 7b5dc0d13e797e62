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

qnet's own topics and payloads are built only by ``emulator.telemetry``.

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

import fcntl
import socket
import struct
import termios
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

__all__ = [
    "Message",
    "MqttClient",
    "MqttConnectError",
    "MqttDisconnected",
    "MqttError",
    "open_mqtt",
]

_HOUSEKEEPING_PERIOD_S = 1.0
_DISCONNECT_FLUSH_S = 1.0
# Packets read per reader wake-up before yielding to other tasks (fairness bound).
_READ_BATCH = 512
_FIONREAD = struct.Struct("i")


class Message(msgspec.Struct, frozen=True):
    """One received MQTT application message."""

    topic: str
    payload: bytes
    retain: bool


class MqttError(Exception):
    """Base class of the errors raised by this module."""


class MqttConnectError(MqttError):
    """The session could not be opened: TCP connect failed, CONNACK refused or never came."""


class MqttDisconnected(MqttError):
    """The broker side broke an open session: connection closed or reset, keepalive expired."""


class _TrioPaho(paho.Client):
    """paho client whose socket was already connected by trio (no blocking connect)."""

    _preconnected: socket.socket | None = None

    def _create_socket(self) -> Any:
        # paho 2.x calls this from reconnect(); paho's own version uses the blocking
        # socket.create_connection, which would freeze the trio run while connecting.
        sock, self._preconnected = self._preconnected, None
        if sock is None:
            raise MqttConnectError("no pre-connected socket (reconnect is not supported)")
        return sock


class MqttClient:
    """An open MQTT session; obtain it from ``open_mqtt``, do not construct it directly."""

    def __init__(self, client_id: str, keepalive: int, max_buffered: int) -> None:
        self.client_id = client_id
        self.dropped = 0  # messages dropped because the receive buffer was full
        self._paho = _TrioPaho(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=paho.MQTTv311,
        )
        self._paho.suppress_exceptions = False
        self._keepalive = keepalive
        self._address = "?"
        self._sock: socket.socket | None = None
        self._buffer: deque[Message] = deque()
        self._max_buffered = max_buffered
        self._message_lot = trio.lowlevel.ParkingLot()
        self._flush_lot = trio.lowlevel.ParkingLot()
        self._write_lot = trio.lowlevel.ParkingLot()
        self._connack = trio.Event()
        self._connack_code: Any = None
        self._suback: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._puback: dict[int, trio.Event] = {}
        self._error: MqttDisconnected | None = None
        self._closing = False
        self._closed = False
        self._consumer_waiting = False
        self._nursery: trio.Nursery | None = None
        p = self._paho
        p.on_connect = self._on_connect
        p.on_disconnect = self._on_disconnect
        p.on_message = self._on_message
        p.on_subscribe = self._on_subscribe
        # on_publish is installed only while a qos 1 publish waits: paho builds two objects
        # per packet for it, which costs a quarter of the qos 0 publish rate.
        p.on_socket_close = self._on_socket_close

    # -- public API --------------------------------------------------------------------

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK; raises MqttError if the broker refused it."""
        self._check_usable()
        rc, mid = self._paho.subscribe(topic_filter, qos)
        self._check_rc(rc, "subscribe")
        event = trio.Event()
        self._suback[mid] = (event, [])
        self._kick_writer()
        try:
            await event.wait()
        finally:
            _, codes = self._suback.pop(mid, (None, []))
        self._raise_if_failed()
        if not codes or any(code.is_failure for code in codes):
            raise MqttError(f"broker refused subscription to {topic_filter!r}: {codes}")

    async def publish(
        self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False
    ) -> None:
        """Publish; qos 0 returns once the kernel took the packet, qos 1 waits for PUBACK."""
        self._check_usable()
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos}")
        info = self._paho.publish(topic, payload, qos=qos, retain=retain)
        self._check_rc(info.rc, "publish")
        event: trio.Event | None = None
        if qos == 1 and not info.is_published():
            event = trio.Event()
            self._puback[info.mid] = event
            self._paho.on_publish = self._on_publish
        if self._paho.want_write():
            # The kernel refused part of it: let the writer flush, and wait (backpressure).
            self._kick_writer()
            while self._paho.want_write() and self._error is None and not self._closed:
                await self._flush_lot.park()
            self._check_usable()
        if event is not None:
            try:
                await event.wait()
            finally:
                self._puback.pop(info.mid, None)
                if not self._puback:
                    self._paho.on_publish = None
            self._raise_if_failed()
        else:
            await trio.lowlevel.checkpoint()
        self._raise_if_failed()

    def messages(self) -> AsyncIterator[Message]:
        """Iterate over received messages; raises MqttDisconnected when the broker is lost."""
        return _MessageIterator(self)

    # -- paho callbacks (run synchronously inside loop_read / loop_write / publish) -----

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connack_code = reason_code
        self._connack.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self._closing:
            self._fail(MqttDisconnected(
                f"connection to the MQTT broker {self._address} lost (broker closed it, "
                f"reset it or stopped answering; paho says: {reason_code})"))

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        if len(self._buffer) >= self._max_buffered:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(Message(message.topic, bytes(message.payload), bool(message.retain)))
        self._message_lot.unpark()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        waiter = self._suback.get(mid)
        if waiter is not None:
            waiter[1].extend(reason_codes)
            waiter[0].set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        event = self._puback.get(mid)
        if event is not None:
            event.set()

    def _on_socket_close(self, client, userdata, sock) -> None:
        # paho is about to close the fd: wake any trio task waiting on it first. (When paho's
        # __del__ closes it after trio.run has ended there is nobody to wake.)
        try:
            trio.lowlevel.notify_closing(sock)
        except RuntimeError:
            pass

    # -- internals ------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("MQTT client is closed")
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise MqttDisconnected(*self._error.args) from self._error

    def _check_rc(self, rc: int, what: str) -> None:
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        self._raise_if_failed()
        if rc in (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_CONN_LOST):
            self._fail(MqttDisconnected(f"{what}: not connected ({paho.error_string(rc)})"))
            self._raise_if_failed()
        raise MqttError(f"{what} failed: {paho.error_string(rc)}")

    def _fail(self, error: MqttDisconnected) -> None:
        """Record the first loss of the connection, wake every waiter, cancel the context."""
        if self._error is None:
            self._error = error
        for event, _ in self._suback.values():
            event.set()
        for event in self._puback.values():
            event.set()
        self._message_lot.unpark_all()
        self._flush_lot.unpark_all()
        self._write_lot.unpark_all()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _kick_writer(self) -> None:
        if self._paho.want_write():
            self._write_lot.unpark_all()

    def _loop_rc(self, rc: int, what: str) -> bool:
        """True if the connection is still usable after a paho loop call."""
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._paho.socket() is not None:
            return True
        if not self._closing:
            self._fail(MqttDisconnected(f"{what}: connection to the MQTT broker "
                                        f"{self._address} lost ({paho.error_string(rc)})"))
        return False

    async def _connect(self, host: str, port: int) -> None:
        self._address = f"{host}:{port}"
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise MqttConnectError(f"cannot connect to MQTT broker {host}:{port}: {exc}") from exc
        # Hand the connected fd over to a plain socket that paho can own.
        raw = socket.socket(fileno=stream.socket.detach())
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = raw
        self._paho._preconnected = raw
        self._paho.connect_async(host, port, keepalive=self._keepalive)
        rc = self._paho.reconnect()  # sends CONNECT on our socket
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttConnectError(f"sending CONNECT failed: {paho.error_string(rc)}")

    async def _reader(self) -> None:
        sock = self._sock
        assert sock is not None
        fd = sock.fileno()
        buf = bytearray(_FIONREAD.size)
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.ClosedResourceError, OSError):
                self._loop_rc(MQTTErrorCode.MQTT_ERR_CONN_LOST, "read")
                return
            # paho reads one packet per call, with exact-size recv()s; keep going while the
            # kernel holds more bytes, so a burst costs one wake-up, not one per message.
            for _ in range(_READ_BATCH):
                if not self._loop_rc(self._paho.loop_read(), "read"):
                    return
                fcntl.ioctl(fd, termios.FIONREAD, buf)
                if _FIONREAD.unpack(buf)[0] == 0:
                    break
            self._kick_writer()  # e.g. PUBACKs paho queued while reading
            await trio.lowlevel.checkpoint()

    async def _writer(self) -> None:
        sock = self._sock
        assert sock is not None
        while True:
            while not self._paho.want_write():
                self._flush_lot.unpark_all()
                await self._write_lot.park()
            try:
                await trio.lowlevel.wait_writable(sock)
            except (trio.ClosedResourceError, OSError):
                self._loop_rc(MQTTErrorCode.MQTT_ERR_CONN_LOST, "write")
                return
            if not self._loop_rc(self._paho.loop_write(), "write"):
                return
            self._flush_lot.unpark_all()

    async def _housekeeping(self) -> None:
        while True:
            await trio.sleep(_HOUSEKEEPING_PERIOD_S)
            if not self._loop_rc(self._paho.loop_misc(), "keepalive"):
                return
            self._kick_writer()  # a PINGREQ may be waiting for the writer

    async def _disconnect(self) -> None:
        """Send DISCONNECT and flush it for at most ``_DISCONNECT_FLUSH_S``."""
        self._closing = True
        if self._paho.socket() is None:
            return
        self._paho.disconnect()
        with trio.move_on_after(_DISCONNECT_FLUSH_S) as scope:
            scope.shield = True
            while self._paho.socket() is not None and self._paho.want_write():
                try:
                    await trio.lowlevel.wait_writable(self._paho.socket())
                except (trio.ClosedResourceError, OSError):
                    break
                if self._paho.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break

    def _close(self) -> None:
        self._closing = True
        self._closed = True
        if self._sock is not None and self._sock.fileno() != -1:
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        self._message_lot.unpark_all()
        self._flush_lot.unpark_all()


class _MessageIterator:
    """Async iterator over a client's receive buffer (plain class: no async-generator GC)."""

    def __init__(self, client: MqttClient) -> None:
        self._client = client

    def __aiter__(self) -> _MessageIterator:
        return self

    async def __anext__(self) -> Message:
        client = self._client
        while not client._buffer:
            client._raise_if_failed()
            if client._closed:
                raise StopAsyncIteration
            if client._consumer_waiting:
                raise RuntimeError("messages() is already being iterated by another task")
            client._consumer_waiting = True
            try:
                await client._message_lot.park()
            finally:
                client._consumer_waiting = False
        await trio.lowlevel.checkpoint_if_cancelled()
        return client._buffer.popleft()


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
    if username is not None:
        client._paho.username_pw_set(username, password)
    if will is not None:
        client._paho.will_set(will[0], will[1], qos=1, retain=True)
    try:
        try:
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(connect_timeout) as connect_scope:
                    await client._connect(host, port)
                    client._nursery = nursery
                    nursery.start_soon(client._reader)
                    nursery.start_soon(client._writer)
                    nursery.start_soon(client._housekeeping)
                    await client._connack.wait()
                if connect_scope.cancelled_caught:
                    raise MqttConnectError(
                        f"no CONNACK from MQTT broker {host}:{port} within {connect_timeout} s")
                code = client._connack_code
                if code is None:
                    raise MqttConnectError(
                        f"MQTT broker {host}:{port} closed the connection before CONNACK")
                if code.is_failure:
                    raise MqttConnectError(f"MQTT broker {host}:{port} refused CONNECT: {code}")
                abrupt = False
                try:
                    yield client
                except trio.Cancelled:
                    raise
                except BaseException:
                    abrupt = True
                    raise
                finally:
                    if not abrupt and client._error is None:
                        await client._disconnect()
                    client._closing = True
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
        client._close()
    if unwrapped is not None:
        raise unwrapped  # outside the except block, so its own __context__ is kept
    if client._error is not None:
        # The loop cancelled the body because the broker went away.
        raise client._error
