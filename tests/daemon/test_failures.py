"""A failure inside a daemon task is not swallowed: it propagates out of ``serve`` (and so ends
the daemon process, which the orchestrator turns into exit 3; tests/e2e/test_daemon_failure.py).
Each test injects the failure with monkeypatch on a physics or memory call."""

from __future__ import annotations

import time

import trio

from emulator.child_config import DaemonConfig, DaemonEntanglementLink, DaemonLink
from emulator.daemon import memories
from emulator.daemon import protocol as p
from emulator.daemon.server import serve
from emulator.physics import detection
from emulator.scenario import LinkEntanglement, NodeMemory, QuantumLink, Source
from nodes.daemon_client import open_daemon

TOKENS = {"alice": "tok-a", "bob": "tok-b"}


def config() -> DaemonConfig:
    quantum = QuantumLink(source=Source(rate_hz=1e6, mu=0.5), frame_ms=10.0)
    ent = DaemonEntanglementLink("ab", "alice", "bob", 1.0, LinkEntanglement(attempt_rate_hz=1e4))
    return DaemonConfig("t", time.time(), 1.0, 1, dict(TOKENS),
                        [DaemonLink("alice-bob", "alice", "bob", 1.0, quantum)],
                        memories={"alice": NodeMemory(slots=4), "bob": NodeMemory(slots=4)},
                        entanglement_links=[ent])


class Injected(Exception):
    pass


async def run_until_failure(start) -> None:
    """Serve, connect alice, ``await start(client)``; return once serve has raised."""
    caught = False
    with trio.fail_after(10):
        try:
            async with trio.open_nursery() as nursery:
                daemon = await nursery.start(serve, config())
                async with open_daemon("127.0.0.1", daemon.port, "alice", "tok-a") as alice:
                    await start(alice)
                    await trio.sleep_forever()
        except* Injected:
            caught = True
        except* ConnectionError:
            pass  # alice's client sees the daemon go away with it
    assert caught


async def test_a_failing_source_task_ends_serve(monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise Injected("sampler")

    monkeypatch.setattr(detection, "detect_frame", failing)
    await run_until_failure(lambda alice: alice.request(p.SourceStart, link="alice-bob",
                                                        prf_key=b"k" * 16))
    assert calls == [1]


async def test_a_failing_heralded_link_ends_serve(monkeypatch):
    def failing(*args, **kwargs):
        raise Injected("store")

    monkeypatch.setattr(memories.QuantumMemories, "store_pair", failing)
    await run_until_failure(lambda alice: alice.request(p.EntangleStart, link="ab"))
