"""Trusted key relay of one node (sans-I/O): keys across a chain of QKD links, hop by hop.

The origin ``path[0]`` makes a fresh key K and sends ``K xor L1`` to ``path[1]``, where L1 is
one key of that link from its key manager; every relay ``path[i]`` takes the same link key by
id from its own key manager, recovers K (a trusted relay sees the key), pads it with a key of
its next link and forwards it; the target stores K for the origin and answers with an ack
that travels back, on which the origin stores K too, so both ends' key managers hold K under
the same id like a direct key (``Deposit`` actions: the shell stores them). Every link spends exactly ``len(K)`` bits of link key per
relayed key, at each of its ends (``stats.consumed_bits``).

Only a link's allocator (the end whose name sorts first, the KMEs' rule) picks that link's
keys: a sender that is not asks the allocator (``RelayPadRequest``) and pads with the key it
names (``RelayPad``). A link key named by the peer that has not reached this key manager yet
(the ends store QKD blocks at slightly different times) is waited for up to
``claim_timeout_s``; a key that has no link key to go on waits up to ``hold_timeout_s``; a
timeout sends a failed ack back and wastes what was spent. The core reads no clock and opens
no socket: the shell passes ``now``, delivers frames, calls ``retry`` when keys arrive and at
``next_deadline``. Key storage is the injected synchronous ``LinkKeys``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from nodes.errors import RemoteProtocolError
from nodes.services.relay.actions import (  # noqa: F401 (re-exported: the core's interface)
    Action,
    Deposit,
    Event,
    LinkKeys,
    LinkKeyUsed,
    RelayStats,
    Send,
    allocator,
    xor,
)
from nodes.services.relay.messages import (
    BadRelayMessage,
    RelayAck,
    RelayDone,
    RelayForward,
    RelayMessage,
    RelayPad,
    RelayPadRequest,
    open_frame,
    seal,
)

CLAIM_TIMEOUT_S = 5.0
HOLD_TIMEOUT_S = 5.0
ORIGIN_TIMEOUT_S = 30.0
MAX_WAITING = 256  # relay steps and grants waiting for keys, per node (bounds a peer's cost)


@dataclass
class _Step:
    """This node's part of relaying one key: ``stage`` says what it waits for."""

    relay_id: str
    seq: int
    path: list[str]
    hop: int  # this node's index in path
    stage: str  # claim (incoming pad bits), take (a key of the next link), granting, pad
    deadline: float
    ciphertext: bytes = b""
    in_id: str = ""
    key: bytes | None = None
    out_id: str = ""


@dataclass
class _Grant:
    """A link key this allocator picks for its neighbour's next forward."""

    path: list[str]
    hop: int  # this node's index
    size: int
    deadline: float
    key_id: str = ""
    pad: bytes | None = None


class RelayCore:
    """One node's part in every relay path through it (origin, relay or target)."""

    def __init__(self, name: str, keys: LinkKeys, secrets: Mapping[str, bytes], *,
                 claim_timeout_s: float = CLAIM_TIMEOUT_S,
                 hold_timeout_s: float = HOLD_TIMEOUT_S,
                 origin_timeout_s: float = ORIGIN_TIMEOUT_S,
                 max_waiting: int = MAX_WAITING) -> None:
        self.name = name
        self.keys = keys
        self._secrets = dict(secrets)
        self.claim_timeout_s = claim_timeout_s
        self.hold_timeout_s = hold_timeout_s
        self.origin_timeout_s = origin_timeout_s
        self.max_waiting = max_waiting
        self._steps: dict[str, _Step] = {}
        self._grants: dict[str, _Grant] = {}
        self._pending: dict[str, tuple[bytes, int, float]] = {}  # origin: id -> K, seq, dl
        self.stats = RelayStats()
        self.done = False  # the origin said it is finished (or, at the origin, finish() ran)

    @property
    def pending(self) -> int:
        """Keys this node originated that are still on their way."""
        return len(self._pending)

    @property
    def waiting(self) -> int:
        return len(self._steps) + len(self._grants)

    def next_deadline(self) -> float | None:
        times = ([s.deadline for s in self._steps.values()]
                 + [g.deadline for g in self._grants.values()]
                 + [p[2] for p in self._pending.values()])
        return min(times, default=None)

    # -- origin ------------------------------------------------------------------------------

    def originate(self, relay_id: str, seq: int, key: bytes, path: list[str],
                  now: float) -> list[Action]:
        """Start relaying ``key``, number ``seq`` of ``path`` (this node first)."""
        if path[0] != self.name or len(path) < 2 or len(set(path)) != len(path):
            raise ValueError(f"{self.name}: cannot originate on path {path}")
        if relay_id in self._pending:
            raise ValueError(f"relay id {relay_id} is already on its way")
        self.stats.counts["originated"] += 1
        self._pending[relay_id] = (key, seq, now + self.origin_timeout_s)
        step = _Step(relay_id, seq, list(path), 0, "take", now + self.hold_timeout_s, key=key)
        return self._send_on(step, now)

    # -- frames from peers -------------------------------------------------------------------

    def receive(self, peer: str, frame: bytes, now: float) -> list[Action]:
        """One frame from ``peer``; a bad one raises ``RemoteProtocolError`` (counted)."""
        secret = self._secrets.get(peer)
        try:
            if secret is None:
                raise BadRelayMessage(f"relay frame from {peer}, not a neighbour", peer=peer)
            message = open_frame(secret, frame, peer)
            self._check_place(peer, message)
            if isinstance(message, RelayForward):
                return self._on_forward(peer, message, now)
            if isinstance(message, RelayPadRequest):
                return self._on_pad_request(peer, message, now)
            if isinstance(message, RelayPad):
                return self._on_pad(message, now)
            if isinstance(message, RelayDone):
                return self._on_done(message)
            return self._on_ack(message)
        except RemoteProtocolError as exc:
            self.stats.failures[getattr(exc, "counter", "relay_remote_error")] += 1
            raise

    def _check_place(self, peer: str, message: RelayMessage) -> None:
        """The message names this node at ``hop`` and its sender next to it on the path."""
        path, hop = message.path, message.hop
        backwards = isinstance(message, RelayAck | RelayPad)
        sender = hop + 1 if backwards else hop - 1
        if (len(set(path)) != len(path) or not 0 <= sender < len(path) or hop >= len(path)
                or path[hop] != self.name or path[sender] != peer):
            raise BadRelayMessage(f"{type(message).__name__} from {peer} for hop {hop} of "
                                  f"{path}", peer=peer)

    def _on_forward(self, peer: str, message: RelayForward, now: float) -> list[Action]:
        grant = self._grants.pop(message.relay_id, None)
        step = _Step(message.relay_id, message.seq, list(message.path), message.hop, "claim",
                     now + self.claim_timeout_s, message.ciphertext, message.link_key_id)
        if grant is not None:  # we picked this link key for the sender
            if grant.pad is None or grant.key_id != message.link_key_id:
                return self._fail(step, "link_key_mismatch")
            return self._recovered(step, grant.pad, now)
        if allocator(self.name, peer) == self.name:
            raise BadRelayMessage(f"relay_forward from {peer} with a link key we did not pick",
                                  peer=peer)
        if message.relay_id in self._steps:
            raise BadRelayMessage(f"relay_forward from {peer}: relay {message.relay_id} is "
                                  "already here", peer=peer)
        if self.waiting >= self.max_waiting:
            return self._fail(step, "relay_busy")
        self._steps[step.relay_id] = step
        return self._advance(step, now) or []

    def _on_pad_request(self, peer: str, request: RelayPadRequest, now: float) -> list[Action]:
        if allocator(self.name, peer) != self.name:
            raise BadRelayMessage(f"relay_pad_request from {peer}, the link's allocator",
                                  peer=peer)
        if request.relay_id in self._grants or self.waiting >= self.max_waiting:
            return self._fail_back(request.relay_id, list(request.path), request.hop - 1,
                                   "relay_busy")
        grant = _Grant(list(request.path), request.hop, request.size, now + self.hold_timeout_s)
        self._grants[request.relay_id] = grant
        return self._grant(request.relay_id, grant, now) or []

    def _on_pad(self, pad: RelayPad, now: float) -> list[Action]:
        step = self._steps.get(pad.relay_id)
        if step is None or step.stage != "granting":
            self.stats.counts["stray_pads"] += 1
            return []
        step.stage, step.out_id, step.deadline = "pad", pad.link_key_id, now + self.claim_timeout_s
        return self._advance(step, now) or []

    def _on_ack(self, ack: RelayAck) -> list[Action]:
        hop = ack.hop
        self._steps.pop(ack.relay_id, None)
        self._grants.pop(ack.relay_id, None)
        if hop > 0:
            back = ack.path[hop - 1]
            return [Send(back, seal(self._secrets[back],
                                    msgspec.structs.replace(ack, hop=hop - 1, mac=b"")))]
        pending = self._pending.pop(ack.relay_id, None)
        if pending is None:  # timed out here already
            self.stats.counts["late_acks"] += 1
            return []
        key, seq, _ = pending
        target = ack.path[-1]
        if not ack.ok:
            self.stats.failures[ack.reason or "failed"] += 1
            return [Event("relay_failed", {"relay_id": ack.relay_id, "target": target,
                                           "reason": ack.reason})]
        self.stats.counts["delivered"] += 1
        return [Deposit(target, ack.relay_id, seq, key),
                Event("relay_key_delivered", {"relay_id": ack.relay_id, "peer": target,
                                              "bits": 8 * len(key), "hops": len(ack.path) - 1})]

    def finish(self, path: list[str]) -> list[Action]:
        """Origin: no more keys on ``path``; tell the path (call once nothing is pending)."""
        self.done = True
        return [Send(path[1], seal(self._secrets[path[1]], RelayDone(path, 1)))]

    def _on_done(self, message: RelayDone) -> list[Action]:
        self.done = True
        if message.hop + 1 < len(message.path):
            nxt = message.path[message.hop + 1]
            return [Send(nxt, seal(self._secrets[nxt], RelayDone(message.path, message.hop + 1)))]
        return []

    # -- waiting for link keys ---------------------------------------------------------------

    def retry(self, now: float) -> list[Action]:
        """Retry every waiting step (keys may have arrived) and expire the overdue ones."""
        actions: list[Action] = []
        for step in list(self._steps.values()):
            if self._steps.get(step.relay_id) is not step:
                continue
            done = self._advance(step, now)
            if done is not None:
                actions += done
            elif now >= step.deadline:
                actions += self._fail(step, {"claim": "link_key_missing", "take":
                                             "no_next_link_key", "granting": "no_pad",
                                             "pad": "link_key_missing"}[step.stage])
        for relay_id, grant in list(self._grants.items()):
            if grant.pad is None:
                done = self._grant(relay_id, grant, now)
                if done is not None:
                    actions += done
                    continue
            if now >= grant.deadline:  # no key to give, or the forward never came
                del self._grants[relay_id]
                if grant.pad is None:
                    actions += self._fail_back(relay_id, grant.path, grant.hop - 1,
                                               "no_next_link_key")
                else:
                    self.stats.failures["grant_unused"] += 1
        for relay_id, (_, seq, deadline) in list(self._pending.items()):
            if now >= deadline:
                del self._pending[relay_id]
                self.stats.failures["origin_timeout"] += 1
                actions.append(Event("relay_failed", {"relay_id": relay_id, "seq": seq,
                                                      "reason": "origin_timeout"}))
        return actions

    def _grant(self, relay_id: str, grant: _Grant, now: float) -> list[Action] | None:
        sender = grant.path[grant.hop - 1]
        taken = self.keys.take(sender, grant.size)
        if taken is None:
            return None
        grant.key_id, grant.pad = taken
        grant.deadline = now + self.claim_timeout_s
        self.stats.consumed_bits[sender] += 8 * len(grant.pad)
        pad = RelayPad(relay_id, grant.path, grant.hop - 1, grant.key_id)
        return [Send(sender, seal(self._secrets[sender], pad))]

    def _advance(self, step: _Step, now: float) -> list[Action] | None:
        """Take ``step`` as far as this node's keys allow (None: it still waits)."""
        path, hop = step.path, step.hop
        if step.stage == "claim":
            pad = self._claim(step, path[hop - 1], step.in_id)
            if pad is None or isinstance(pad, list):
                return pad
            if len(pad) != len(step.ciphertext):
                return self._fail(step, "size_mismatch")
            return self._recovered(step, pad, now)
        if step.stage == "take":
            return self._send_on(step, now, waiting=True)
        if step.stage == "pad":
            pad = self._claim(step, path[hop + 1], step.out_id)
            if pad is None or isinstance(pad, list):
                return pad
            assert step.key is not None
            if len(pad) != len(step.key):
                return self._fail(step, "size_mismatch")
            return self._forward(step, step.out_id, pad)
        return None  # granting: waits for the allocator's RelayPad

    def _claim(self, step: _Step, peer: str, key_id: str) -> bytes | list[Action] | None:
        try:
            pad = self.keys.claim(peer, key_id)
        except LinkKeyUsed:
            return self._fail(step, "link_key_used")
        if pad is not None:
            self.stats.consumed_bits[peer] += 8 * len(pad)
        return pad

    def _recovered(self, step: _Step, pad: bytes, now: float) -> list[Action]:
        """K is known here: store it (target) or send it on."""
        step.key = xor(step.ciphertext, pad)
        path = step.path
        if step.hop == len(path) - 1:
            self._steps.pop(step.relay_id, None)
            self.stats.counts["stored"] += 1
            ack = RelayAck(step.relay_id, path, step.hop - 1, True)
            return [Deposit(path[0], step.relay_id, step.seq, step.key),
                    Event("relay_key_stored", {"relay_id": step.relay_id, "peer": path[0],
                                               "bits": 8 * len(step.key),
                                               "hops": len(path) - 1}),
                    Send(path[-2], seal(self._secrets[path[-2]], ack))]
        step.stage, step.deadline = "take", now + self.hold_timeout_s
        self._steps[step.relay_id] = step
        return self._send_on(step, now) or []

    def _send_on(self, step: _Step, now: float, waiting: bool = False) -> list[Action] | None:
        """Pad K for the next node: with a key we take, or ask that node for one."""
        assert step.key is not None
        nxt = step.path[step.hop + 1]
        if allocator(self.name, nxt) != self.name:
            step.stage, step.deadline = "granting", now + self.hold_timeout_s
            self._steps[step.relay_id] = step
            request = RelayPadRequest(step.relay_id, step.path, step.hop + 1, len(step.key))
            return [Send(nxt, seal(self._secrets[nxt], request))]
        taken = self.keys.take(nxt, len(step.key))
        if taken is None:
            self._steps[step.relay_id] = step
            return None if waiting else []
        link_key_id, pad = taken
        self.stats.consumed_bits[nxt] += 8 * len(pad)
        return self._forward(step, link_key_id, pad)

    def _forward(self, step: _Step, link_key_id: str, pad: bytes) -> list[Action]:
        self._steps.pop(step.relay_id, None)
        assert step.key is not None
        self.stats.counts["steps_sent"] += 1
        if step.hop > 0:
            self.stats.counts["forwarded"] += 1
        peer = step.path[step.hop + 1]
        forward = RelayForward(step.relay_id, step.seq, step.path, step.hop + 1, link_key_id,
                               xor(step.key, pad))
        return [Event("relay_step", {"relay_id": step.relay_id, "hop": step.hop + 1,
                                     "to": peer, "link_key_id": link_key_id,
                                     "bits": 8 * len(pad)}),
                Send(peer, seal(self._secrets[peer], forward))]

    def _fail(self, step: _Step, reason: str) -> list[Action]:
        """Give ``step`` up here: a failed ack back towards the origin (or, at the origin,
        the relay ends)."""
        self._steps.pop(step.relay_id, None)
        if step.hop == 0:
            self._pending.pop(step.relay_id, None)
            self.stats.failures[reason] += 1
            return [Event("relay_failed", {"relay_id": step.relay_id, "target": step.path[-1],
                                           "reason": reason})]
        return self._fail_back(step.relay_id, step.path, step.hop - 1, reason)

    def _fail_back(self, relay_id: str, path: list[str], to_hop: int,
                   reason: str) -> list[Action]:
        self.stats.failures[reason] += 1
        back = path[to_hop]
        ack = RelayAck(relay_id, path, to_hop, False, reason)
        return [Event("relay_failed", {"relay_id": relay_id, "hop": to_hop + 1,
                                       "reason": reason}),
                Send(back, seal(self._secrets[back], ack))]
