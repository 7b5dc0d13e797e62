"""A small blocking Python client for a node's local app socket (``nodes/app_socket.py``).

``AppClient.from_env()`` connects with the address and token the node put in the environment
of the program it started; every method sends one request and waits for its reply. Errors
from the node or the daemon raise ``AppError`` with the daemon's code (e.g. ``not_allowed``).
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Self

import msgspec

from emulator.daemon import protocol as p
from emulator.wire import HEADER
from nodes import app_socket as a


class AppError(Exception):
    def __init__(self, error: p.Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.code = error.code


class AppClient:
    """One connection to the app socket; ``info`` says who we are and our links."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self._send(a.AppHello(token))
        info = self._receive()
        if isinstance(info, p.Error):
            raise AppError(info)
        self.info: a.NodeInfo = info
        self.node = info.node

    @classmethod
    def from_env(cls) -> AppClient:
        host, port = os.environ["QNET_APP_SOCKET"].rsplit(":", 1)
        return cls(host, int(port), os.environ["QNET_APP_TOKEN"])

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- wire ---------------------------------------------------------------------------------

    def _send(self, message: msgspec.Struct) -> None:
        payload = a.encoder.encode(message)
        self.sock.sendall(HEADER.pack(len(payload)) + payload)

    def _receive(self):
        while True:
            if len(self._buffer) >= HEADER.size:
                (n,) = HEADER.unpack_from(self._buffer)
                if len(self._buffer) >= HEADER.size + n:
                    payload = bytes(self._buffer[HEADER.size:HEADER.size + n])
                    del self._buffer[:HEADER.size + n]
                    return a.reply_decoder.decode(payload)
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the node closed the app socket")
            self._buffer += data

    def request(self, kind: type, **fields):
        rid = next(self._ids)
        self._send(kind(id=rid, **fields))
        reply = self._receive()
        if isinstance(reply, p.Error):
            raise AppError(reply)
        return reply

    # -- operations (the same as nodes/entanglement/qubits.py) ---------------------------------

    def ref(self, slot: int) -> p.QubitRef:
        return p.QubitRef(self.node, slot)

    def start_link(self, link: str, max_pending: int = 0) -> p.EntangleStarted:
        return self.request(p.EntangleStart, link=link, max_pending=max_pending)

    def stop_link(self, link: str) -> None:
        self.request(p.EntangleStop, link=link)

    def pairs(self, link: str, max: int = 4096, timeout_s: float = 1.0) -> p.PairsDelivered:
        return self.request(p.PairAwait, link=link, max=max, timeout_s=timeout_s)

    def prepare(self, theta: float = 0.0, phi: float = 0.0) -> p.Prepared:
        return self.request(p.QubitPrepare, theta=theta, phi=phi)

    def gate(self, gate: str, *qubits: p.QubitRef, angle: float = 0.0) -> None:
        self.request(p.QubitGate, gate=gate, qubits=list(qubits), angle=angle)

    def measure(self, qubits: list[p.QubitRef], bases: list[str] | str) -> p.Measured:
        bases = [bases] if isinstance(bases, str) else list(bases)
        return self.request(p.QubitMeasure, qubits=list(qubits), bases=bases)

    def bell_measure(self, q1: p.QubitRef, q2: p.QubitRef) -> p.BellResult:
        return self.request(p.BellMeasure, q1=q1, q2=q2)

    def discard(self, *qubits: p.QubitRef) -> None:
        self.request(p.QubitDiscard, qubits=list(qubits))

    def now(self) -> float:
        return self.request(a.Now).t

    def open_channel(self, peer: str, name: str, dial: bool) -> int:
        return self.request(a.ChannelOpen, peer=peer, name=name, dial=dial).channel

    def send(self, channel: int, payload: bytes) -> None:
        self.request(a.ChannelSend, channel=channel, payload=payload)

    def receive(self, channel: int) -> bytes:
        return self.request(a.ChannelReceive, channel=channel).payload
