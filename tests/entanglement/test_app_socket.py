"""The local app socket: token check, forwarded quantum operations (still only this node's
qubits), and the blocking client, against a real daemon over TCP."""

from __future__ import annotations

import time

import numpy as np
import pytest
import trio

from emulator.child_config import DaemonConfig, DaemonEntanglementLink, node_view
from emulator.clock import EmulatedClock
from emulator.daemon import protocol as p
from emulator.daemon.server import serve
from emulator.scenario import parse_scenario
from nodes.app_socket import AppSocket
from nodes.apps.client import AppClient, AppError
from nodes.daemon_client import open_daemon
from nodes.sdk import NodeContext
from nodes.transport import Transport

RAW = {
    "scenario": {"name": "t"},
    "nodes": [{"name": "alice", "memory": {"slots": 64}},
              {"name": "bob", "memory": {"slots": 64}}],
    "links": [{"a": "alice", "b": "bob", "length_km": 1, "entanglement": {}}],
}


def client_session(port: int, token: str) -> dict:
    """What an external program does (blocking, in a worker thread)."""
    with pytest.raises((AppError, ConnectionError)):
        AppClient("127.0.0.1", port, "wrong-token")
    with AppClient("127.0.0.1", port, token) as client:
        info = client.info
        assert (info.node, info.peer, info.role, info.links) == ("alice", "bob", "a",
                                                                 {"bob": "alice-bob"})
        client.start_link("alice-bob")
        got = []
        while len(got) < 50:
            got += client.pairs("alice-bob", max=50 - len(got)).pairs
        client.stop_link("alice-bob")
        # pairs delivered meanwhile still hold alice's slots: collect them so all can be freed
        got += client.pairs("alice-bob", max=1000, timeout_s=0.2).pairs
        with pytest.raises(AppError) as refused:
            client.measure([p.QubitRef("bob", got[0].slot)], "Z")
        bits = np.frombuffer(client.measure([client.ref(x.slot) for x in got], "Z").outcomes,
                             np.uint8)[:50]
        prepared = client.prepare()  # a free slot again: measuring frees it
        zero = client.measure([prepared.qubit], "Z").outcomes
        return {"n": len(bits), "code": refused.value.code, "zero": zero, "t": client.now()}


async def test_app_socket_forwards_only_own_qubit_operations(nursery) -> None:
    sc = parse_scenario(RAW)
    t0 = time.monotonic()
    config = DaemonConfig("t", t0, 1.0, 3, {"alice": "ta", "bob": "tb"}, [],
                          memories={n.name: n.memory for n in sc.nodes},
                          entanglement_links=[DaemonEntanglementLink(
                              "alice-bob", "alice", "bob", 1.0, sc.links[0].entanglement)])
    daemon = await nursery.start(serve, config)
    async with (open_daemon("127.0.0.1", daemon.port, "alice", "ta") as alice_daemon,
                open_daemon("127.0.0.1", daemon.port, "bob", "tb") as bob_daemon):
        node = NodeContext(name="alice", run_id="t", seed=1, clock=EmulatedClock(t0, 1.0),
                           view=node_view(sc, "alice"), daemon=alice_daemon, transport=Transport("alice"),
                           mqtt=None)  # type: ignore[arg-type]
        sock = AppSocket(node, "bob", "a")
        async with trio.open_nursery() as inner:
            port = await inner.start(sock.serve)

            async def drain_bob() -> None:  # bob frees his halves so slots recycle
                while True:
                    reply = await bob_daemon.request(p.PairAwait, link="alice-bob", max=1000)
                    if reply.pairs:
                        await bob_daemon.request(p.QubitDiscard, qubits=[
                            p.QubitRef("bob", x.slot) for x in reply.pairs])

            inner.start_soon(drain_bob)
            with trio.fail_after(20):
                out = await trio.to_thread.run_sync(client_session, port, sock.token,
                                                   abandon_on_cancel=True)
            inner.cancel_scope.cancel()
    assert out["n"] == 50
    assert out["code"] == "not_allowed"
    assert out["zero"] == b"\x00"
    assert out["t"] > 0
