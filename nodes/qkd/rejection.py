"""A post-processing message fed to its core with the peer's bad block contained: reported and
answered as rejected, so one bad block ends that block, never the QKD session (both QKD apps).
"""

from __future__ import annotations

from nodes import remote_errors
from nodes.errors import BlockRejected, RemoteProtocolError
from nodes.sdk import NodeContext


async def post_processing_step(node: NodeContext, link: str, post, message,
                               rejected: list[RemoteProtocolError]) -> list:
    """One message into a post-processing core; a rejected block is reported and answered."""
    try:
        return post.on_message(message)
    except BlockRejected as exc:
        rejected.append(exc)
        await remote_errors.report(node, link, [exc])
        return post.reject(exc)
