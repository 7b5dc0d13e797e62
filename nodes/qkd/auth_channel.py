"""A reliable, authenticated message link over one classical channel (sans-I/O).

Every outgoing message is wrapped in an ``Envelope`` (data sequence number, cumulative ack)
and sealed with a one-time Poly1305 key (``nodes.qkd.auth``). A frame that fails
authentication is dropped and counted, and answered with a NACK naming the next data
sequence number expected; the sender then re-seals (with fresh one-time keys) and resends
every unacknowledged message from there. So a modified or replayed message never reaches the
protocol, and the protocol still sees every message exactly once and in order.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from nodes.errors import MalformedMessage, RemoteProtocolError
from nodes.qkd.auth import Authenticator, AuthError

DATA, NACK = 0, 1
RENACK_INTERVAL_S = 1.0
MAX_RENACKS = 30


class Envelope(msgspec.Struct, array_like=True):
    kind: int
    seq: int
    ack: int  # every data message below this was received
    body: bytes = b""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


class LinkFailed(RemoteProtocolError):
    """The peer never resent what we NACKed: the link is unusable (ends the session)."""


class AuthenticatedLink:
    """``send(body) -> frame``; ``receive(frame, now) -> (bodies, frames to send)``."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.auth = authenticator
        self._next_send = 0
        self._unacked: OrderedDict[int, bytes] = OrderedDict()
        self._next_receive = 0
        self._nacked: int | None = None  # data seq we asked for and still wait for
        self._nack_deadline: float | None = None
        self._renacks = 0
        self.retransmitted = 0

    @property
    def rejected(self) -> int:
        """Frames dropped because they failed authentication (modified, replayed, ...)."""
        return self.auth.rejected_total

    def _seal(self, kind: int, seq: int, body: bytes = b"") -> bytes:
        return self.auth.seal(_encoder.encode(Envelope(kind, seq, self._next_receive, body)))

    def send(self, body: bytes) -> bytes:
        seq = self._next_send
        self._next_send += 1
        self._unacked[seq] = body
        return self._seal(DATA, seq, body)

    def _nack(self, now: float) -> bytes:
        self._nacked = self._next_receive
        self._nack_deadline = now + RENACK_INTERVAL_S
        return self._seal(NACK, self._next_receive)

    def receive(self, frame: bytes, now: float) -> tuple[list[bytes], list[bytes]]:
        try:
            opened = self.auth.open(frame)
        except AuthError:
            if self._nacked == self._next_receive:
                return [], []  # already asked for it
            return [], [self._nack(now)]
        try:  # authentic, so the peer's own fault if it does not decode
            envelope = _decoder.decode(opened)
        except msgspec.DecodeError as exc:
            raise MalformedMessage(f"authenticated frame is no envelope: {exc}") from None
        while self._unacked and next(iter(self._unacked)) < envelope.ack:
            self._unacked.popitem(last=False)
        if envelope.kind == NACK:
            frames = [self._seal(DATA, seq, body) for seq, body in self._unacked.items()
                      if seq >= envelope.seq]
            self.retransmitted += len(frames)
            return [], frames
        if envelope.seq != self._next_receive:
            return [], []  # a duplicate, or past a gap we have NACKed: it will be resent
        self._next_receive += 1
        if self._nacked is not None and self._next_receive > self._nacked:
            self._nacked = self._nack_deadline = None
            self._renacks = 0
        return [envelope.body], []

    def next_deadline(self) -> float | None:
        return self._nack_deadline

    def handle_timer(self, now: float) -> list[bytes]:
        """Repeat a NACK that was not answered (it may itself have been lost)."""
        if self._nack_deadline is None or now < self._nack_deadline:
            return []
        self._renacks += 1
        if self._renacks > MAX_RENACKS:
            raise LinkFailed(f"no resend of message {self._nacked} after {MAX_RENACKS} NACKs")
        return [self._nack(now)]
