"""Faults on the relay (classical plane): a quantum-plane fault leaves it alone, a cut of the
classical plane or of both stops it, ``degrade`` drops datagrams with its extra probability
(binomial, within 4 sigma), and the relay's traffic reports count what it delivered."""

from __future__ import annotations

import math

import trio

from emulator.child_config import Direction
from emulator.relay import serve
from emulator.telemetry import LinkControl
from tests.test_relay import HOST, open_node, relay_config, send_paced


async def test_planes_and_degrade_on_the_relay() -> None:
    a, b = await open_node(), await open_node()
    got: list[bytes] = []

    async def receive() -> None:
        while True:
            got.append(await b.udp.recv(100))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            relay = await nursery.start(serve, relay_config(a, b, Direction(), seed=5))
            nursery.start_soon(receive)
            assert relay.apply(LinkControl("cut", plane="quantum")) is None
            assert not relay.is_cut
            assert relay.apply(LinkControl("cut", plane="classical")).startswith("classical cut")
            assert relay.is_cut
            assert relay.apply(LinkControl("restore")) == "classical restored"
            assert not relay.is_cut
            assert relay.apply(LinkControl("restore")) == "classical was not cut"
            n, loss = 2000, 0.2
            assert relay.apply(LinkControl("degrade", loss=loss)) == (
                "classical extra datagram loss 0.2")
            await send_paced(a.udp, (HOST, relay.listen["a"]["udp"]), relay, n)
            while len(got) < relay.counters.messages:
                await trio.sleep(0.001)
            dropped = relay.counters.dropped
            assert abs(dropped - n * loss) <= 4 * math.sqrt(n * loss * (1 - loss))
            relay.apply(LinkControl("degrade", loss=0.0))
            before, delivered = relay.counters.dropped, relay.counters.messages
            for seq in range(200):
                await a.udp.sendto(b"%d" % seq, (HOST, relay.listen["a"]["udp"]))
                while relay.counters.messages + relay.counters.dropped < delivered + before + seq + 1:
                    await trio.sleep(0.001)
            assert relay.counters.dropped == before
            assert relay.counters.messages == delivered + 200
            nursery.cancel_scope.cancel()
