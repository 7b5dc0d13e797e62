"""emulator.batches: what is queued together comes out together, bounded, never waited for."""

from __future__ import annotations

import trio
import trio.testing

from emulator.batches import batches


async def test_queued_messages_come_in_one_batch_within_the_limit() -> None:
    send, receive = trio.open_memory_channel(16)
    for i in range(5):
        send.send_nowait(i)
    await send.aclose()
    assert [b async for b in batches(receive, limit=2)] == [[0, 1], [2, 3], [4]]


async def test_a_lone_message_is_not_held_for_more() -> None:
    send, receive = trio.open_memory_channel(16)
    got = []

    async def take() -> None:
        async for batch in batches(receive):
            got.append(batch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await send.send("a")
        await trio.testing.wait_all_tasks_blocked()
        assert got == [["a"]]  # delivered before anything else is sent
        send.send_nowait("b")
        send.send_nowait("c")
        await send.aclose()
    assert got == [["a"], ["b", "c"]]
