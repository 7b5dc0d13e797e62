"""The key service as the node runtime starts it: key manager, KME over HTTPS, peer links.

``bind`` opens the KME's port (before the node reports ready, so the printed curl lines work
as soon as the run starts); ``serve_peers`` runs once the orchestrator said go (the relays'
addresses are known then): one authenticated channel per direct neighbour, named ``kms``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from emulator.child_config import NodeKms, NodeView
from nodes.services.keys import KeyManager
from nodes.services.kme.app import create_app
from nodes.services.kme.peer_link import PeerLink
from nodes.services.kme.server import serve_kme, server_context
from nodes.services.kme.service import Kme, KmeOptions
from nodes.transport import Transport

CHANNEL = "kms"
PEER_TIMEOUT_S = 5.0  # wall seconds, at least; more over slow links (see peer_timeout)


def peer_timeout(view: NodeView, time_scale: float) -> float:
    """Wall seconds a peer KME may take to answer: a round trip over the slowest own link."""
    delays = [link.classical_delay_s + link.classical.jitter_ms / 1000 for link in view.links]
    return max(PEER_TIMEOUT_S, 8 * max(delays, default=0.0) / time_scale)


class KeyService:
    """Node ``name``'s key manager and KME, wired to its transport."""

    def __init__(self, name: str, config: NodeKms, view: NodeView, transport: Transport,
                 link_keys: dict[str, str], host: str, time_scale: float) -> None:
        self.config = config
        self.host = host
        s = config.settings
        self.options = KmeOptions(key_size=s.key_size, max_key_count=s.max_key_count,
                                  max_key_per_request=s.max_key_per_request,
                                  min_key_size=s.min_key_size,
                                  peer_timeout_s=peer_timeout(view, time_scale))
        self.keys = KeyManager(Path(config.database), s.key_size, s.max_key_count)
        self.kme = Kme(name, self.keys, config.saes, self.options)
        for link in view.links:
            peer = link.b if link.a == name else link.a
            if peer in self.kme.peers or peer not in link_keys:
                continue

            def open_channel(peer=peer, dial=min(name, peer) == name):
                return (transport.connect(peer, CHANNEL) if dial
                        else transport.accept(peer, CHANNEL))

            async def handle(message, peer=peer):
                return await self.kme.on_peer(peer, message)

            key = bytes.fromhex(link_keys[peer])  # PeerSession derives its own key from it
            self.kme.add_peer(peer, PeerLink(name, peer, key, open_channel, handle,
                                             self.options.peer_timeout_s))

    async def bind(self, nursery: trio.Nursery) -> int:
        """Start the HTTPS server in ``nursery``; returns its port."""
        context = server_context(Path(self.config.cert), Path(self.config.key),
                                 Path(self.config.ca))
        return await nursery.start(serve_kme, create_app(self.kme), context, self.host,
                                   self.config.port)

    async def serve_peers(self, publish: Callable[..., Awaitable[None]]) -> None:
        """Run the peer channels; ``publish(kind, **fields)`` sends the KME's events (the
        node's ``event``)."""
        async def events() -> None:
            async for kind, fields in self.kme.events:
                await publish(kind, **fields)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.kme.run_discards)
            nursery.start_soon(events)
            for link in self.kme.peers.values():
                nursery.start_soon(link.run)

    async def report(self) -> dict:
        return await self.kme.report()

    def close(self) -> None:
        self.keys.close()

