"""A shell whose peer sends garbage or breaks the protocol ends with a result, counts the
error, publishes a ``remote_protocol_error`` event and stops its link; the process goes on.

In-memory fakes for the node (channel, daemon operations, clock); the shells are the real ones.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest
import trio

from nodes.entanglement.pairs import shell as pairs_shell
from nodes.entanglement.pairs.spec import PairsApp
from nodes.entanglement.swapping import Finished, FinishedAck, Outcomes, encoder
from nodes.entanglement.teleport import shell as teleport_shell
from nodes.entanglement.teleport.ends import Teleported
from nodes.entanglement.teleport.spec import TeleportApp


class FakeChannel:
    """Delivers ``frames`` in order, then waits forever; records what the shell posts."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames, self.posted = list(frames), []
        self.drained = trio.Event()

    async def receive(self) -> bytes:
        if self.frames:
            await trio.lowlevel.checkpoint()
            return self.frames.pop(0)
        await trio.sleep_forever()

    def post(self, payload: bytes) -> None:
        self.posted.append(payload)

    async def run_writer(self) -> None:  # like Channel: ends once drained
        await self.drained.wait()

    async def drain(self) -> None:
        self.drained.set()
        await trio.lowlevel.checkpoint()


class FakeOps:
    """Daemon operations: no pair is ever heralded; links started and stopped are counted."""

    stopped: list[str] = []

    def __init__(self, daemon, name: str) -> None:
        pass

    async def start_link(self, link: str, max_pending: int = 0):
        return SimpleNamespace(p_success=1.0)

    async def pairs(self, link: str, **kw):
        await trio.sleep_forever()

    async def stop_link(self, link: str) -> None:
        FakeOps.stopped.append(link)


def fake_node(name: str, channel: FakeChannel) -> SimpleNamespace:
    events: list[dict] = []

    async def event(kind: str, **fields) -> None:
        events.append({"kind": kind, **fields})

    async def accept(peer: str, name: str) -> FakeChannel:
        return channel

    async def sleep_until(t: float) -> None:
        await trio.lowlevel.checkpoint()

    link = SimpleNamespace(id="alice-bob", a="alice", b="bob")
    return SimpleNamespace(
        name=name, events=events, event=event, daemon=None, partial=lambda entry: None,
        view=SimpleNamespace(link_between=lambda a, b: link, memory=SimpleNamespace(slots=8)),
        transport=SimpleNamespace(accept=accept, connect=accept),
        clock=SimpleNamespace(sleep_until=sleep_until, now=lambda: 0.0),
        rng=lambda purpose: np.random.default_rng(0), t_start=0.0, t_end=1.0)


@pytest.fixture(autouse=True)
def fake_ops(monkeypatch):
    FakeOps.stopped = []
    monkeypatch.setattr(pairs_shell, "QuantumOps", FakeOps)
    monkeypatch.setattr(teleport_shell, "QuantumOps", FakeOps)


def run_app(coro_fn, *args):
    out = {}

    async def main() -> None:
        with trio.fail_after(5):
            out["entry"] = await coro_fn(*args)

    trio.run(main)
    return out["entry"]


@pytest.mark.parametrize("frames, error", [
    ([b"\xc1garbage"], "MalformedMessage"),
    ([msgspec.msgpack.encode({"type": "teleported", "x": 1})], "MalformedMessage"),
    ([encoder.encode(Teleported(1, 2, 0, 0.0, 0.0, 0.0))], "MalformedMessage"),  # m1 = 2
    ([teleport_shell.encoder.encode(teleport_shell.Ack(3))], "UnexpectedMessage"),
])
def test_teleport_receiver_survives_a_bad_peer(frames: list[bytes], error: str) -> None:
    node = fake_node("bob", FakeChannel(frames))
    app = TeleportApp(a="alice", b="bob", count=10)
    entry = run_app(teleport_shell.run_receiver, node, app)
    assert entry["remote_errors"] == 1 and entry["count"] == 0
    assert math.isnan(entry["fidelity_mean"])
    (event,) = node.events
    assert event["kind"] == "remote_protocol_error" and event["error"] == error
    assert event["scope"] == "session"
    assert FakeOps.stopped == ["alice-bob"]


@pytest.mark.parametrize("frames, error", [
    ([b"\x00\x01\x02"], "MalformedMessage"),
    ([encoder.encode(Outcomes([1, 2], "Z", b"\x00", [0.0]))], "MalformedMessage"),
    ([encoder.encode(Finished(0))], None),  # a clean end: nothing to join
])
def test_pair_end_b_survives_a_bad_peer(frames: list[bytes], error: str | None) -> None:
    channel = FakeChannel(frames)
    node = fake_node("bob", channel)
    app = PairsApp(a="alice", b="bob", count=10)
    entry = run_app(pairs_shell.run_end_b, node, app)
    assert entry["pairs"] == 0 and entry["section"] == "entanglement"
    if error is None:
        assert entry["remote_errors"] == 0 and node.events == []
        assert channel.posted == [encoder.encode(FinishedAck())]  # the last word on it
    else:
        assert entry["remote_errors"] == 1
        (event,) = node.events
        assert event["kind"] == "remote_protocol_error" and event["error"] == error
    assert FakeOps.stopped == ["alice-bob"]
