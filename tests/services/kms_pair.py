"""Two KMEs (alice, bob) in one trio run: key managers, peer link over a memory stream,
HTTPS servers on loopback, the run's PKI; used by the KME tests and the benchmark."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import trio
import trio.testing

from emulator.pki import RunPki, create_run_pki
from emulator.wire import FramedStream
from nodes.services.keys import KeyManager
from nodes.services.kme import Kme, KmeOptions, PeerLink, create_app, serve_kme, server_context
from nodes.services.kme.client import KmeClient, client_context
from nodes.transport import Channel

SAES = {"sae-a": "alice", "sae-b": "bob", "sae-c": "bob", "sae-d": "bob", "sae-e": "alice"}


@dataclass
class Pair:
    pki: RunPki
    kmes: dict[str, Kme]
    managers: dict[str, KeyManager]
    urls: dict[str, str]
    links: dict[str, PeerLink] = field(default_factory=dict)
    blocks: int = 0

    async def deposit(self, n_bits: int, seed: int = 0) -> None:
        """The same block of key bits at both ends (as QKD delivers it)."""
        bits = np.random.default_rng([seed, self.blocks]).integers(0, 2, n_bits, dtype=np.uint8)
        await self.managers["alice"].deposit("bob", "alice-bob", self.blocks, bits)
        await self.managers["bob"].deposit("alice", "alice-bob", self.blocks, bits)
        self.blocks += 1

    def client(self, sae: str, node: str | None = None) -> KmeClient:
        issued = self.pki.saes[sae]
        context = client_context(issued.cert, issued.key, self.pki.ca)
        return KmeClient(self.urls[node or SAES[sae]], context)


@asynccontextmanager
async def kms_pair(directory: Path, options: KmeOptions | None = None, connect: bool = True):
    options = options or KmeOptions()
    pki = create_run_pki(directory / "kms", ["alice", "bob"], list(SAES))
    link_key = os.urandom(32)
    streams = dict(zip(["alice", "bob"], trio.testing.memory_stream_pair()))
    managers, kmes, links = {}, {}, {}
    for node, peer in (("alice", "bob"), ("bob", "alice")):
        managers[node] = KeyManager(directory / f"{node}.sqlite", options.key_size,
                                    options.max_key_count)
        kmes[node] = Kme(node, managers[node], SAES, options)
        first = [Channel(FramedStream(streams[node]), peer, "kms")] if connect else []

        async def open_channel(first=first):
            if first:
                return first.pop()
            await trio.sleep_forever()

        links[node] = PeerLink(node, peer, link_key, open_channel,
                               partial(kmes[node].on_peer, peer), options.peer_timeout_s)
        kmes[node].add_peer(peer, links[node])
    async with trio.open_nursery() as nursery:
        urls = {}
        for node in ("alice", "bob"):
            nursery.start_soon(links[node].run)
            nursery.start_soon(kmes[node].run_discards)
            issued = pki.kmes[node]
            port = await nursery.start(serve_kme, create_app(kmes[node]),
                                       server_context(issued.cert, issued.key, pki.ca),
                                       "127.0.0.1", 0)
            urls[node] = f"https://127.0.0.1:{port}"
        try:
            yield Pair(pki, kmes, managers, urls, links)
        finally:
            nursery.cancel_scope.cancel()
    for manager in managers.values():
        manager.close()
