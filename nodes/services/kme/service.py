"""One node's KME: the ETSI GS QKD 014 operations on the key manager and the peer KMEs.

``status``, ``enc_keys`` and ``dec_keys`` take the calling SAE (from its TLS certificate) and
return the spec's Structs or raise ``KmeError`` (400 bad request, 401 not this SAE's keys,
503 not enough keys or the peer KME unreachable). A key leaves the store for a master SAE only
once the slave's KME holds it reserved for that slave (``Release``/``Ack`` or
``Allocate``/``Allocated``, see ``peering``); when an exchange fails half-way the keys it
touched are discarded, never offered again. ``on_peer`` answers the peer KMEs. Additional
slave SAEs (key multicast) must be attached to the slave's KME; each gets the keys once.
"""

from __future__ import annotations

import base64
import logging
import math
import uuid
from collections import Counter

import msgspec
import trio

from nodes.services.keys import (
    AVAILABLE,
    DELIVERED,
    DISCARDED,
    RESERVED,
    KeyManager,
    NotEnoughKeys,
    NotReleased,
)
from nodes.services.keys.store import STATES
from nodes.services.kme.models import Key, KeyContainer, KeyRequest, Status
from nodes.services.kme.peer_link import PeerLink, PeerUnavailable
from nodes.services.kme.peering import (
    Ack,
    Allocate,
    Allocated,
    Discard,
    PeerMessage,
    Ping,
    Pong,
    Refused,
    Release,
    allocator_of,
)

log = logging.getLogger("qnet.kme")


class KmeOptions(msgspec.Struct, forbid_unknown_fields=True):
    """A KME's limits (scenario ``[kms]``): sizes in bits."""

    key_size: int = 256
    max_key_count: int = 100_000
    max_key_per_request: int = 128
    min_key_size: int = 8
    max_sae_id_count: int = 8  # additional slave SAEs a request may name (at the slave's KME)
    peer_timeout_s: float = 5.0  # wall seconds for the peer KME's answer
    pending_wait_s: float = 2.0  # wall seconds to wait for a released key still being stored

    @property
    def max_key_size(self) -> int:
        return self.key_size


class KmeError(Exception):
    """An ETSI 014 error answer: HTTP ``status`` with ``message`` and ``details``."""

    def __init__(self, status: int, message: str, **details: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = [details] if details else []


def kme_id(node: str) -> str:
    return f"{node}-kme"


class Kme:
    """The KME of node ``node``; ``saes`` maps every SAE id of the run to its node."""

    def __init__(self, node: str, keys: KeyManager, saes: dict[str, str],
                 options: KmeOptions) -> None:
        self.node = node
        self.keys = keys
        self.saes = saes
        self.options = options
        self.peers: dict[str, PeerLink] = {}
        self.counters: Counter[str] = Counter()
        # (kind, fields) for the node's MQTT events: a pool that runs dry or serves again
        self._events_send, self.events = trio.open_memory_channel[tuple[str, dict]](math.inf)
        self._exhausted: set[tuple[str, str]] = set()  # (master, slave) pairs last refused

    def _pool_event(self, master: str, slave: str, served: bool, stored: int) -> None:
        """Edge-triggered events: ``kms_exhausted`` at the first 503 for lack of keys after
        keys were served (or at the start), ``kms_resumed`` when that pair is served again."""
        pair = (master, slave)
        if served and pair in self._exhausted:
            self._exhausted.discard(pair)
            self._events_send.send_nowait(("kms_resumed", {"master_sae": master,
                                                           "slave_sae": slave}))
        elif not served and pair not in self._exhausted:
            self._exhausted.add(pair)
            self._events_send.send_nowait(("kms_exhausted", {"master_sae": master,
                                                             "slave_sae": slave,
                                                             "stored_key_count": stored}))

    def add_peer(self, peer: str, link: PeerLink) -> None:
        self.peers[peer] = link
        link.on_change = lambda up: self._events_send.send_nowait(
            ("kms_peer_up" if up else "kms_peer_down", {"peer": peer}))
        link.on_stall = lambda stalled: self._events_send.send_nowait(
            ("kms_peer_unanswered" if stalled else "kms_peer_answering", {"peer": peer}))
        if allocator_of(self.node, peer) == self.node:
            self.keys.limited_peers.add(peer)

    async def run_discards(self) -> None:
        """Tell each peer which of its keys this (allocating) node dropped: pool full."""
        async for peer, ids in self.keys.dropped:
            if peer in self.peers:
                self.peers[peer].notify(Discard(ids))

    # --- the SAE side --------------------------------------------------------------------

    def _local(self, caller: str) -> None:
        if self.saes.get(caller) != self.node:
            raise KmeError(401, f"SAE {caller!r} is not attached to {kme_id(self.node)}")

    def _peer_of(self, sae: str, role: str) -> str:
        node = self.saes.get(sae)
        if node is None:
            raise KmeError(400, f"unknown {role} SAE {sae!r}")
        if node not in self.peers:
            raise KmeError(400, f"no key pool between {kme_id(self.node)} and the KME of "
                           f"{sae!r} ({kme_id(node)})")
        return node

    async def status(self, caller: str, slave: str) -> Status:
        self._local(caller)
        peer = self._peer_of(slave, "slave")
        o = self.options
        stored = await self.keys.call(self.keys.db.stored_count, peer)
        return Status(source_KME_ID=kme_id(self.node), target_KME_ID=kme_id(peer),
                      master_SAE_ID=caller, slave_SAE_ID=slave, key_size=o.key_size,
                      stored_key_count=stored, max_key_count=o.max_key_count,
                      max_key_per_request=o.max_key_per_request, max_key_size=o.max_key_size,
                      min_key_size=o.min_key_size, max_SAE_ID_count=o.max_sae_id_count)

    def _check_request(self, request: KeyRequest) -> tuple[int, int]:
        o = self.options
        number = 1 if request.number is None else request.number
        size = o.key_size if request.size is None else request.size
        if number > o.max_key_per_request:
            raise KmeError(400, "number exceeds max_key_per_request", number=number,
                           max_key_per_request=o.max_key_per_request)
        if size % 8 or not o.min_key_size <= size <= o.max_key_size:
            raise KmeError(400, "size must be a multiple of 8 between min_key_size and "
                           "max_key_size", size=size, min_key_size=o.min_key_size,
                           max_key_size=o.max_key_size)
        if request.extension_mandatory:
            raise KmeError(400, "mandatory extensions not supported",
                           extension_mandatory=[sorted(e) for e in request.extension_mandatory])
        return number, size

    def _additional(self, slave: str, peer: str, also: list[str]) -> list[str]:
        """The additional slave SAEs of a request: known, distinct, at the slave's KME."""
        limit = self.options.max_sae_id_count
        if len(also) > limit:
            raise KmeError(400, "more additional_slave_SAE_IDs than max_SAE_ID_count",
                           additional_slave_SAE_IDs=len(also), max_SAE_ID_count=limit)
        if len(set(also)) != len(also) or slave in also:
            raise KmeError(400, "a slave SAE is named twice (slave_SAE_ID and "
                           "additional_slave_SAE_IDs must all differ)")
        for sae in also:
            node = self.saes.get(sae)
            if node is None:
                raise KmeError(400, f"unknown additional slave SAE {sae!r}")
            if node != peer:
                raise KmeError(400, f"additional slave SAE {sae!r} is attached to "
                               f"{kme_id(node)}, not to the slave's KME {kme_id(peer)}: all "
                               f"slaves of a request must be served by one KME",
                               slave_SAE_ID=sae, KME_ID=kme_id(node))
        return list(also)

    async def enc_keys(self, caller: str, slave: str, request: KeyRequest) -> KeyContainer:
        """Keys for master SAE ``caller`` to share with ``slave`` (and the additional slaves,
        which then get the same keys)."""
        self._local(caller)
        peer = self._peer_of(slave, "slave")
        number, size = self._check_request(request)
        also = self._additional(slave, peer, request.additional_slave_SAE_IDs)
        self.counters["enc_requests"] += 1
        link = self.peers[peer]
        if link.stalled:  # the last request went unanswered: put no keys at stake blindly
            try:
                await link.request(Ping)
            except PeerUnavailable as exc:
                raise KmeError(503, "the slave's KME is unreachable", reason=str(exc)) from None
        if link.dialler:  # this node allocates
            try:
                got = await self.keys.call(self.keys.db.allocate, peer, number, DELIVERED,
                                           caller, slave, size)
            except NotEnoughKeys as exc:
                self._pool_event(caller, slave, False, exc.have)
                raise KmeError(503, "not enough keys stored", stored_key_count=exc.have,
                               number=number) from None
            ids = [kid for kid, _ in got]
            try:
                reply = await link.request(
                    lambda req: Release(req, ids, caller, slave, size, also))
            except PeerUnavailable as exc:
                await self._discard(ids, "release_unanswered")
                raise KmeError(503, "the slave's KME did not confirm the keys",
                               reason=str(exc)) from None
            if not isinstance(reply, Ack) or reply.conflicts:
                await self._discard(ids, "release_conflicts")
                raise KmeError(503, "the slave's KME refused the keys", reason="conflict")
        else:
            try:
                reply = await link.request(
                    lambda req: Allocate(req, number, size, caller, slave, also))
            except PeerUnavailable as exc:
                raise KmeError(503, "the slave's KME did not answer", reason=str(exc)) from None
            if isinstance(reply, Refused):
                self._pool_event(caller, slave, False, reply.have)
                raise KmeError(503, "not enough keys stored", stored_key_count=reply.have,
                               number=number)
            if not isinstance(reply, Allocated) or len(reply.ids) != number:
                raise KmeError(503, "the slave's KME sent an unexpected answer")
            ids = reply.ids
            conflicts = await self.keys.call(self.keys.db.apply, peer, ids, DELIVERED, caller,
                                             slave, size)
            if conflicts:
                await self._discard(ids, "allocation_conflicts")
                raise KmeError(503, "keys allocated by the peer KME are not available here")
            got = await self._materials(ids, size)
        self.counters["enc_keys_delivered"] += len(got)
        if also:
            self.counters["enc_keys_multicast"] += len(got)
        self._pool_event(caller, slave, True, 0)
        return _container(got)

    async def _materials(self, ids: list[str], size: int) -> list[tuple[str, bytes]]:
        """The material of keys this node just marked delivered, waiting briefly for keys
        the peer allocated before this node stored them."""
        with trio.move_on_after(self.options.pending_wait_s):
            while True:
                deposited = self.keys.deposit_event()
                rows = await self.keys.call(self.keys.db.get, ids)
                if all(rows[k].material is not None for k in ids):
                    return [(k, rows[k].material[:size // 8]) for k in ids]
                await deposited.wait()
        await self._discard(ids, "allocation_unstored")
        raise KmeError(503, "keys allocated by the peer KME are not stored here yet")

    async def _discard(self, ids: list[str], reason: str) -> None:
        self.counters[f"discarded_{reason}"] += len(ids)
        await self.keys.call(self.keys.db.discard, ids)

    async def dec_keys(self, caller: str, master: str, ids: list[str]) -> KeyContainer:
        """The keys ``ids`` that master SAE ``master`` shares with slave SAE ``caller``."""
        self._local(caller)
        if master not in self.saes:
            raise KmeError(400, f"unknown master SAE {master!r}")
        if len(ids) > self.options.max_key_per_request:
            raise KmeError(400, "more key_IDs than max_key_per_request", number=len(ids),
                           max_key_per_request=self.options.max_key_per_request)
        if len(set(ids)) != len(ids):
            raise KmeError(400, "a key_ID is repeated")
        for kid in ids:
            try:
                uuid.UUID(kid)
            except ValueError:
                raise KmeError(400, "key_ID is not a UUID", key_ID=kid[:64]) from None
        self.counters["dec_requests"] += 1
        with trio.move_on_after(self.options.pending_wait_s):
            while True:
                deposited = self.keys.deposit_event()
                try:
                    got = await self.keys.call(self.keys.db.claim, ids, caller, master)
                except NotReleased as exc:
                    if exc.ids:
                        raise KmeError(401, "key_IDs not released to this SAE",
                                       key_IDs=exc.ids[:8]) from None
                    await deposited.wait()
                    continue
                self.counters["dec_keys_delivered"] += len(got)
                return _container(got)
        raise KmeError(503, "released keys not stored here yet")

    # --- the peer side ---------------------------------------------------------------------

    async def on_peer(self, peer: str, message: PeerMessage) -> PeerMessage | None:
        """Answer a peer KME's instruction (its keys, this node's copies)."""
        if isinstance(message, Release):
            if allocator_of(self.node, peer) != peer or not self._slaves_here(message) or \
                    self.saes.get(message.master_sae) != peer:
                self.counters["peer_requests_refused"] += 1
                return Ack(message.req, list(message.ids))  # all in conflict: nothing reserved
            conflicts = await self.keys.call(self.keys.db.apply, peer, message.ids, RESERVED,
                                             message.master_sae, message.slave_sae, message.size,
                                             message.also)
            self.counters["released_by_peer"] += len(message.ids) - len(conflicts)
            return Ack(message.req, [c.key_id for c in conflicts])
        if isinstance(message, Allocate):
            if not self._slaves_here(message) or allocator_of(
                    self.node, peer) != self.node or self.saes.get(message.master_sae) != peer:
                self.counters["peer_requests_refused"] += 1
                return Refused(message.req, 0)
            try:
                got = await self.keys.call(self.keys.db.allocate, peer, message.number,
                                           RESERVED, message.master_sae, message.slave_sae,
                                           message.size, message.also)
            except NotEnoughKeys as exc:
                return Refused(message.req, exc.have)
            self.counters["allocated_for_peer"] += len(got)
            return Allocated(message.req, [kid for kid, _ in got])
        if isinstance(message, Ping):
            return Pong(message.req)
        if isinstance(message, Discard):
            await self.keys.call(self.keys.db.apply, peer, message.ids, DISCARDED)
            self.counters["discarded_by_peer"] += len(message.ids)
            return None
        self.counters["peer_unexpected"] += 1
        return None

    def _slaves_here(self, message: Release | Allocate) -> bool:
        """All the slave SAEs a peer names are attached here, each once."""
        slaves = [message.slave_sae, *message.also]
        return len(set(slaves)) == len(slaves) and len(message.also) <= \
            self.options.max_sae_id_count and all(self.saes.get(s) == self.node for s in slaves)

    async def report(self) -> dict:
        """This KME in result.json's ``kms``: keys by state (all peers, and per peer), ETSI
        requests and error answers, store commits, peer channel counters."""
        counts = await self.keys.call(self.keys.db.counts)
        total = {state: sum(c[state] for c in counts.values()) for state in STATES}
        c = self.counters
        return {"node": self.node, "kme": kme_id(self.node),
                "stored": total[AVAILABLE], "reserved": total[RESERVED],
                "delivered": total[DELIVERED], "discarded": total[DISCARDED],
                "enc_requests": c["enc_requests"], "dec_requests": c["dec_requests"],
                "keys_served": c["enc_keys_delivered"] + c["dec_keys_delivered"],
                "http_400": c["http_400"], "http_401": c["http_401"], "http_503": c["http_503"],
                "peers": counts, "commits": self.keys.db.commits,
                "store": dict(self.keys.counters), "counters": dict(c),
                "peer_links": {p: dict(link.counters) for p, link in self.peers.items()}}


def _container(got: list[tuple[str, bytes]]) -> KeyContainer:
    return KeyContainer([Key(key_ID=kid, key=base64.b64encode(material).decode())
                         for kid, material in got])
