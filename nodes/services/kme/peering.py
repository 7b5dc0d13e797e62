"""KME-to-KME messages and their authentication (sans-I/O): who may give which keys to whom.

Of the two KMEs of a link, the one with the smaller node name is the pair's *allocator*: it
alone picks keys from the pool, so two masters at the two ends never take the same key.
A master at the allocator takes keys there and sends ``Release`` (the peer reserves them for
the slave SAE and any additional slaves, ``also``, answers ``Ack``); a master at the other end
asks with ``Allocate`` (the allocator reserves keys for its local slaves, answers
``Allocated`` or ``Refused``); keys the allocator dropped (pool full) go out in ``Discard``. After a request went unanswered, a
``Ping``/``Pong`` checks the peer answers again before more keys are put at stake.

Each channel starts with a ``hello`` nonce from each side; the session key is
HMAC-SHA256(link key, label | dialler nonce | acceptor nonce | names), and every frame is
``seq (8 bytes) | body | tag`` with the tag an HMAC-SHA256/16 over the direction, the sequence
number and the body: a changed, replayed, reordered or reflected frame fails ``open``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

import msgspec

LABEL = b"qnet-kms-peer/1"
NONCE_BYTES = 16
TAG_BYTES = 16
_SEQ = struct.Struct(">Q")


class PeerAuthError(Exception):
    """A frame from the peer KME failed authentication (the channel is dropped)."""


class Release(msgspec.Struct, tag=True):
    req: int
    ids: list[str]
    master_sae: str
    slave_sae: str
    size: int
    also: list[str] = []  # the additional slave SAEs (ETSI 014 key multicast)


class Ack(msgspec.Struct, tag=True):
    req: int
    conflicts: list[str] = []  # ids the peer had already given another state


class Allocate(msgspec.Struct, tag=True):
    req: int
    number: int
    size: int
    master_sae: str
    slave_sae: str
    also: list[str] = []  # the additional slave SAEs, at the allocator like slave_sae


class Allocated(msgspec.Struct, tag=True):
    req: int
    ids: list[str]


class Refused(msgspec.Struct, tag=True):
    req: int
    have: int  # keys the allocator had for this pair


class Discard(msgspec.Struct, tag=True):
    ids: list[str]


class Ping(msgspec.Struct, tag=True):
    """Is the peer KME answering? (sent before touching keys after a request went unanswered)"""

    req: int


class Pong(msgspec.Struct, tag=True):
    req: int


PeerMessage = Release | Ack | Allocate | Allocated | Refused | Discard | Ping | Pong
encoder = msgspec.msgpack.Encoder()
decoder = msgspec.msgpack.Decoder(PeerMessage)


def allocator_of(a: str, b: str) -> str:
    """The node that allocates the keys of the pair (a, b)."""
    return min(a, b)


class PeerSession:
    """Authentication of one channel between two KMEs (``dialler``: the side that opened it)."""

    def __init__(self, link_key: bytes, me: str, peer: str, dialler: bool) -> None:
        self._link_key = link_key
        self.me, self.peer, self.dialler = me, peer, dialler
        self.nonce = secrets.token_bytes(NONCE_BYTES)
        self._key: bytes | None = None
        self._sent = 0
        self._received = 0

    def hello(self) -> bytes:
        return self.nonce

    def on_hello(self, frame: bytes) -> None:
        if len(frame) != NONCE_BYTES:
            raise PeerAuthError(f"peer KME hello of {len(frame)} bytes")
        dialler_nonce, acceptor_nonce = (self.nonce, frame) if self.dialler else (frame, self.nonce)
        dialler, acceptor = (self.me, self.peer) if self.dialler else (self.peer, self.me)
        material = LABEL + dialler_nonce + acceptor_nonce + f"{dialler}>{acceptor}".encode()
        self._key = hmac.new(self._link_key, material, hashlib.sha256).digest()

    def _tag(self, from_dialler: bool, seq: int, body: bytes) -> bytes:
        assert self._key is not None, "hello not exchanged"
        head = (b"D" if from_dialler else b"A") + _SEQ.pack(seq)
        return hmac.new(self._key, head + body, hashlib.sha256).digest()[:TAG_BYTES]

    def seal(self, message: PeerMessage) -> bytes:
        body = encoder.encode(message)
        self._sent += 1
        return _SEQ.pack(self._sent) + body + self._tag(self.dialler, self._sent, body)

    def open(self, frame: bytes) -> PeerMessage:
        if len(frame) < _SEQ.size + TAG_BYTES:
            raise PeerAuthError(f"peer KME frame of {len(frame)} bytes")
        (seq,) = _SEQ.unpack_from(frame)
        body, tag = frame[_SEQ.size:-TAG_BYTES], frame[-TAG_BYTES:]
        if not hmac.compare_digest(tag, self._tag(not self.dialler, seq, body)):
            raise PeerAuthError("peer KME frame failed authentication")
        if seq != self._received + 1:
            raise PeerAuthError(f"peer KME frame {seq} after {self._received} (replayed or lost)")
        self._received = seq
        try:
            return decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise PeerAuthError(f"authenticated peer KME frame is no message: {exc}") from None
