"""An open MQTT session on paho-mqtt 2.x inside a trio run: the client API (subscribe,
publish, messages), paho's callbacks and the network loop tasks (``emulator.mqtt`` explains).
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

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

    # -- session lifetime (driven by ``emulator.mqtt.open_mqtt``) ------------------------

    def configure(
        self, will: tuple[str, bytes | str] | None, username: str | None, password: str | None
    ) -> None:
        """Set the login and the will (qos 1, retained) that CONNECT carries."""
        if username is not None:
            self._paho.username_pw_set(username, password)
        if will is not None:
            self._paho.will_set(will[0], will[1], qos=1, retain=True)

    async def start(self, host: str, port: int, nursery: trio.Nursery) -> None:
        """Connect, run the network loop in ``nursery`` and wait for CONNACK (any answer)."""
        await self._connect(host, port)
        self._nursery = nursery
        nursery.start_soon(self._reader)
        nursery.start_soon(self._writer)
        nursery.start_soon(self._housekeeping)
        await self._connack.wait()

    def check_connack(self, host: str, port: int) -> None:
        """Raise ``MqttConnectError`` unless the broker's CONNACK accepted the session."""
        code = self._connack_code
        if code is None:
            raise MqttConnectError(f"MQTT broker {host}:{port} closed the connection before CONNACK")
        if code.is_failure:
            raise MqttConnectError(f"MQTT broker {host}:{port} refused CONNECT: {code}")

    @property
    def error(self) -> MqttDisconnected | None:
        """How the broker broke the session, or None while it is fine."""
        return self._error

    async def finish(self, *, abrupt: bool) -> None:
        """End the session: DISCONNECT unless ``abrupt`` (then the broker publishes the will)."""
        if not abrupt and self._error is None:
            await self._disconnect()
        self._closing = True

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

    def close(self) -> None:
        """Close the socket and wake every waiter (after ``finish``, or alone on failure)."""
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
