"""One node's key service as its own process, for the SIGKILL + restart test.

Runs a key manager on its database, a KME on a fixed HTTPS port and the peer KME channel over
plain loopback TCP (the allocator dials the other's fixed port), deposits the same QKD blocks
at every start (a restart re-deposits them: duplicates are ignored), then writes its ready
file. ``python -m tests.services.kme_process --config C.json --ready-file R.json``.
"""

from __future__ import annotations

import logging
import sys
from functools import partial

import msgspec
import numpy as np
import trio

from emulator.child_config import child_arguments, read_config, write_ready
from emulator.supervise import exit_quietly_on_sigterm, watch_parent
from emulator.wire import FramedStream
from nodes.services.keys import KeyManager
from nodes.services.kme import Kme, KmeOptions, PeerLink, create_app, serve_kme, server_context
from nodes.transport import MAX_FRAME, Channel


class HarnessConfig(msgspec.Struct):
    node: str
    peer: str
    saes: dict[str, str]
    database: str
    cert: str
    key: str
    ca: str
    https_port: int
    peer_port: int  # where the non-allocator listens for the allocator's channel
    link_key: str
    blocks: int
    bits_per_block: int
    key_size: int = 256


def block_bits(block: int, n: int) -> np.ndarray:
    return np.random.default_rng([7, block]).integers(0, 2, n, dtype=np.uint8)


async def main(config: HarnessConfig, ready_file) -> None:
    options = KmeOptions(key_size=config.key_size, max_key_per_request=16, peer_timeout_s=2.0,
                         pending_wait_s=1.0)
    keys = KeyManager(config.database, config.key_size, options.max_key_count)
    kme = Kme(config.node, keys, config.saes, options)
    dial = min(config.node, config.peer) == config.node
    listener = None if dial else (await trio.open_tcp_listeners(config.peer_port,
                                                                host="127.0.0.1"))[0]

    async def open_channel() -> Channel:
        if dial:
            stream = await trio.open_tcp_stream("127.0.0.1", config.peer_port)
        else:
            stream = await listener.accept()
        return Channel(FramedStream(stream, MAX_FRAME), config.peer, "kms")

    link = PeerLink(config.node, config.peer, bytes.fromhex(config.link_key), open_channel,
                    partial(kme.on_peer, config.peer), options.peer_timeout_s)
    kme.add_peer(config.peer, link)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run)
        nursery.start_soon(kme.run_discards)
        await nursery.start(serve_kme, create_app(kme),
                            server_context(config.cert, config.key, config.ca), "127.0.0.1",
                            config.https_port)
        link_name = "-".join(sorted([config.node, config.peer]))
        for block in range(config.blocks):
            await keys.deposit(config.peer, link_name, block,
                               block_bits(block, config.bits_per_block))
        write_ready(ready_file, https=config.https_port, stored=keys.db.stored_count(config.peer))
        await watch_parent()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    exit_quietly_on_sigterm()
    args = child_arguments("one node's key service")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    trio.run(main, read_config(args.config, HarnessConfig), args.ready_file)
