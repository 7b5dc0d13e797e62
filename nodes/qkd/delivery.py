"""Delivering finished post-processing blocks: the I/O step every QKD app shares.

An ``ok`` block first refills the authentication pools with its ``auth_material`` (both ends
do it with the same bytes, in block order), then its key goes to the key store under
``<link>/<block>``; every block, kept or not (``rejected`` when the peer's data for it was
inconsistent), is announced on the node's MQTT events.
"""

from __future__ import annotations

from collections import deque

from nodes.qkd.blocks import Block
from nodes.qkd.keystore import KeyStore
from nodes.qkd.secure_channel import SecureChannel
from nodes.sdk import NodeContext


async def deliver_blocks(node: NodeContext, link: str, protocol: str, store: KeyStore,
                         secure: SecureChannel, finished: deque[Block]) -> int:
    """Deliver every finished block; returns how many (the caller then updates its partial
    result)."""
    delivered = len(finished)
    while finished:
        block = finished.popleft()
        if block.status == "ok":
            secure.link.auth.replenish(block.auth_material)
            store.add(f"{link}/{block.block}", block.final_key)
            if node.keys is not None:  # the node's durable key manager (nodes/services/keys)
                await node.keys.deposit(store.peer, link, block.block, block.final_key)
            await node.event("key_produced", link=link, block=block.block,
                             bits=len(block.final_key), protocol=protocol)
        else:
            await node.event(f"qkd_block_{block.status}", link=link, block=block.block,
                             protocol=protocol)
    return delivered
