"""Messages of a trio channel in batches: each with those already queued behind it.

One wake-up and one pass for what arrived together (pushes in one frame, switches in one
write, measurements in one request), never a wait for more: a lone message goes at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import trio

T = TypeVar("T")


async def batches(receive: trio.MemoryReceiveChannel[T], limit: int | None = None
                  ) -> AsyncIterator[list[T]]:
    """Each message of ``receive`` with the ones queued behind it, at most ``limit`` a batch;
    ends when the channel does."""
    async for first in receive:
        batch = [first]
        while limit is None or len(batch) < limit:
            try:
                batch.append(receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        yield batch
