"""Node side of ``kms.relay`` (trio shell of ``core``): channels, key manager, KME peering.

Each node of the path opens the relay channel to its path neighbours (the end whose name
sorts first dials) and feeds the core frames, wake-ups after deposits into its key manager,
and its deadlines; every core call runs in the key manager's worker thread (``KeyManager.call``,
one at a time), so the core's synchronous ``LinkKeys`` calls go straight to SQLite. The
origin keeps ``window`` keys in flight while its first link has keys; after the run's end
the origin goes on until ``quiet_s`` pass without a deposit or a frame (QKD post-processing
lags the sources), at most ``after_end_s``; then its keys in flight land or time out and a
``RelayDone`` down the path ends every node's part. A relay short of keys on its next link
costs the origin at most ``window`` keys' worth of the earlier links per hold timeout.

Key ``seq`` 0 of a path is not served: the two ends use it as the secret of their KMEs'
peer channel (over the program tunnels), so the KME of ``a`` can release relayed keys to the
SAEs of ``b`` exactly as for a direct link (an enc_keys for ``b``'s SAE before that answers
400, no pool yet). Every later key is deposited like a QKD block of link
``relay:<a>><b>``, so both ends derive the same id, ``relay_id``.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import trio

from nodes.errors import RemoteProtocolError
from nodes.sdk import NodeContext, current_app
from nodes.services.keys import AVAILABLE, DELIVERED, KeyDB, NotEnoughKeys, key_id
from nodes.services.kme.peer_link import PeerLink
from nodes.services.relay.core import Deposit, Event, LinkKeyUsed, RelayCore, Send
from nodes.services.relay.spec import RelayApp

log = logging.getLogger("qnet.relay")

RELAY_SAE = "qnet-relay"  # the "SAE" that link keys spent by the relay are delivered to
KME_CHANNEL = "kme-relayed"
RECONNECT_S, RECONNECT_MAX_S = 0.2, 5.0  # the dialler's backoff after a broken relay channel


class StoreKeys:
    """``LinkKeys`` on the node's SQLite store (called in the key manager's worker thread)."""

    def __init__(self, db: KeyDB) -> None:
        self.db = db
        self._marked: set[str] = set()  # claimed before their bits were stored here

    def take(self, peer: str, size_bytes: int) -> tuple[str, bytes] | None:
        try:
            (got,) = self.db.allocate(peer, 1, DELIVERED, RELAY_SAE, RELAY_SAE, 8 * size_bytes)
        except NotEnoughKeys:
            return None
        return got

    def claim(self, peer: str, kid: str) -> bytes | None:
        if kid not in self._marked:
            row = self.db.get([kid]).get(kid)
            if row is not None and row.state != AVAILABLE:
                raise LinkKeyUsed(kid)
            if self.db.apply(peer, [kid], DELIVERED, RELAY_SAE, RELAY_SAE, None):
                raise LinkKeyUsed(kid)
            self._marked.add(kid)
        row = self.db.get([kid]).get(kid)
        if row is None or row.material is None:
            return None
        self._marked.discard(kid)
        return row.material


def last_relayed(db: KeyDB, link: str) -> int | None:
    """The highest ``seq`` of ``link`` in the store (None: none yet)."""
    return db.db.execute("SELECT max(block) FROM keys WHERE link = ?", (link,)).fetchone()[0]


def relay_link(app: RelayApp) -> str:
    """The name end-to-end keys of ``app`` are filed under (their ids derive from it)."""
    return f"relay:{app.a}>{app.b}"


async def run(node: NodeContext, app: RelayApp) -> list[dict]:
    if node.keys is None:
        raise RuntimeError("kms.relay needs the node's key manager (declare an SAE)")
    path = app.full_path
    me = path.index(node.name)
    neighbours = [p for p in (path[me - 1] if me > 0 else None,
                              path[me + 1] if me + 1 < len(path) else None) if p]
    keys = node.keys
    core = RelayCore(node.name, StoreKeys(keys.db),
                     {p: node.transport.link_key(p) for p in neighbours},
                     claim_timeout_s=app.claim_timeout_s, hold_timeout_s=app.hold_timeout_s,
                     origin_timeout_s=2 * len(path) * (app.claim_timeout_s + app.hold_timeout_s))
    channel_name = f"relay/{current_app.get()}"
    inbox_send, inbox = trio.open_memory_channel[tuple[str, bytes]](math.inf)
    channels: dict = {}
    connected = {peer: trio.Event() for peer in neighbours}
    stopping = False
    done = trio.Event()  # the origin's RelayDone came
    activity = [trio.Event()]  # set (and replaced) whenever a deposit or a frame came
    auth = trio.Event()
    auth_key: list[bytes] = []  # key 0 of the path; the latest one the far end stored wins
    auth_id = key_id(relay_link(app), 0, 0)
    auth_retry = [False]  # the origin's key 0 failed on its way: send a new one
    peering: list[PeerLink] = []
    far = path[-1] if me == 0 else path[0] if me == len(path) - 1 else None
    deposits = {"deposited": 0, "dropped": 0}

    async def act(actions) -> None:
        for action in actions:
            if isinstance(action, Send):
                channels[action.peer].post(action.frame)
            elif isinstance(action, Event):
                if action.kind == "relay_failed" and action.fields.get("relay_id") == auth_id \
                        and me == 0:
                    auth_retry[0] = True
                await node.event(action.kind, **action.fields, relay=app.label)
            elif isinstance(action, Deposit):
                await deposit(action)

    async def deposit(action: Deposit) -> None:
        expected = key_id(relay_link(app), action.seq, 0)
        if action.relay_id != expected:  # the origin names keys by the shared rule
            log.warning("relayed key %s is not key %d of %s", action.relay_id, action.seq,
                        relay_link(app))
            deposits["dropped"] += 1
            return
        if action.seq == 0:
            auth_key.append(action.key)
            for peer_link in peering:  # a repeated key 0 (its first ack was lost): the
                peer_link._link_key = action.key  # next (re)connection uses the new one
            auth.set()
            return
        bits = np.unpackbits(np.frombuffer(action.key, dtype=np.uint8))
        result = await keys.deposit(action.peer, relay_link(app), action.seq, bits)
        deposits["deposited"] += result.stored
        deposits["dropped"] += len(result.dropped)

    async def link(peer: str) -> None:
        """The relay channel to ``peer``, opened again if it breaks (what was on it is lost:
        those keys time out and are counted)."""
        dial = min(node.name, peer) == node.name
        backoff = RECONNECT_S
        while True:
            try:
                channel = await (node.transport.connect(peer, channel_name) if dial
                                 else node.transport.accept(peer, channel_name))
            except OSError as exc:
                log.warning("relay channel to %s: %s", peer, exc)
            else:
                channels[peer] = channel
                connected[peer].set()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(channel.run_writer)
                    try:
                        while True:
                            inbox_send.send_nowait((peer, await channel.receive()))
                    except ConnectionError as exc:
                        log.warning("relay channel to %s ended: %s", peer, exc)
                        core.stats.counts["channel_failures"] += 1
                        nursery.cancel_scope.cancel()
            if dial:
                await trio.sleep(backoff)
                backoff = min(2 * backoff, RECONNECT_MAX_S)

    async def originate_while_keys(seq: list[int]) -> None:
        """Origin: fill the window while the first link has keys and the run lasts."""
        while (core.pending < app.window and not stopping
               and (app.max_keys is None or seq[0] <= app.max_keys)):
            if min(node.name, path[1]) == node.name:  # we pick the first link's keys
                if await keys.call(keys.db.stored_count, path[1]) == 0:
                    return
            number = 0 if auth_retry[0] else seq[0]
            auth_retry[0] = False
            key = os.urandom(keys.key_size // 8)
            await act(await keys.call(core.originate, key_id(relay_link(app), number, 0),
                                      number, key, path, trio.current_time()))
            seq[0] += number == seq[0]

    async def serve() -> None:
        # a restarted origin goes on after the keys it already stored (new ids), with a
        # fresh key 0 for the KMEs' channel (the target keeps the latest)
        last = await keys.call(last_relayed, keys.db, relay_link(app))
        seq = [0]
        if last is not None:
            seq[0], auth_retry[0] = last + 1, True
        while True:
            if me == 0:
                await originate_while_keys(seq)
            deposited = keys.deposit_event()
            deadline = core.next_deadline()
            got: list[tuple[str, bytes]] = []
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                async with trio.open_nursery() as wake:  # only waits: no work is cancelled
                    async def frame() -> None:
                        got.append(await inbox.receive())
                        wake.cancel_scope.cancel()

                    async def new_keys() -> None:
                        await deposited.wait()
                        wake.cancel_scope.cancel()

                    wake.start_soon(frame)
                    wake.start_soon(new_keys)
            for peer, payload in got:
                try:
                    await act(await keys.call(core.receive, peer, payload, trio.current_time()))
                except RemoteProtocolError as exc:  # counted by the core
                    log.warning("relay frame from %s rejected: %s", peer, exc)
            await act(await keys.call(core.retry, trio.current_time()))
            if got or deposited.is_set():
                activity[0].set()
                activity[0] = trio.Event()
            if core.done:
                done.set()

    async def kme_peering() -> None:
        """The ends' KMEs talk over the tunnels, authenticated by key 0 of the path."""
        kme, tunnel = node.kme, node.tunnel
        if kme is None or tunnel is None:
            log.warning("no KME or tunnel on %s: relayed keys are not served", node.name)
            return
        if far in kme.peers:  # a direct link: the KMEs already talk over it
            return
        dial = min(node.name, far) == node.name

        async def open_channel():
            return await (tunnel.connect_frames(far, KME_CHANNEL) if dial
                          else tunnel.accept_frames(far, KME_CHANNEL))

        async def handle(message):
            return await kme.on_peer(far, message)

        peer_link = PeerLink(node.name, far, auth_key[-1], open_channel, handle,
                             kme.options.peer_timeout_s)
        kme.add_peer(far, peer_link)
        peering.append(peer_link)
        await node.event("relay_kme_peering", peer=far, relay=app.label)
        await peer_link.run()

    async def serve_peering() -> None:
        await auth.wait()
        if node.services is not None:  # lives as long as the node, not the app
            node.services.start_soon(kme_peering)

    async with trio.open_nursery() as nursery:
        for peer in neighbours:
            nursery.start_soon(link, peer)
        for event in connected.values():
            await event.wait()
        nursery.start_soon(serve)
        if far is not None:
            nursery.start_soon(serve_peering)
        await node.clock.sleep_until(node.t_end)
        if me == 0:
            with trio.move_on_after(app.after_end_s):
                while True:  # until quiet: no deposit and no frame for quiet_s
                    with trio.move_on_after(app.quiet_s) as quiet:
                        await activity[0].wait()
                    if quiet.cancelled_caught:
                        break
            stopping = True
            with trio.move_on_after(core.origin_timeout_s):
                while core.pending:  # the last keys land or time out
                    await activity[0].wait()
            await act(core.finish(path))
        else:  # until the origin says it is done (it knows when nothing is on its way)
            with trio.move_on_after(app.after_end_s + core.origin_timeout_s + app.quiet_s):
                await done.wait()
        if me + 1 < len(path):
            with trio.move_on_after(app.quiet_s):  # RelayDone leaves before the channel
                await channels[path[me + 1]].drain()
        nursery.cancel_scope.cancel()
    stats = core.stats.as_dict()
    if node.kme is not None:  # also in result.json kms: this node's KME report, per relay
        node.kme.counters["relay_bits_consumed"] += stats["bits_consumed"]
        node.kme.counters["relay_keys_forwarded"] += stats.get("forwarded", 0)
    return [{"node": node.name, "role": "origin" if me == 0 else "target" if far else "relay",
             "key_bits": keys.key_size, "path": path, **stats, **deposits}]
