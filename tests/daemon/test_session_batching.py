"""Requests written together: the daemon answers every request of one read in order, each with
its own reply or error, in one write; a malformed frame among them is fatal only after the
replies to the requests before it; the client's ``request_many`` matches replies by id."""

from __future__ import annotations

import pytest
import trio

from emulator.daemon import protocol as p
from emulator.wire import FramedStream, frame
from nodes.daemon_client import DaemonError, open_daemon
from tests.daemon.test_server import KEY, TOKENS, Peer, make_config


@pytest.fixture
async def daemon(nursery):
    from emulator.daemon.server import serve
    return await nursery.start(serve, make_config())


def writes_of_daemon(monkeypatch) -> list[int]:
    """Frames per ``send_many`` call, recorded for every FramedStream in this process."""
    calls: list[int] = []
    original = FramedStream.send_many

    async def recording(self, payloads):
        payloads = list(payloads)
        calls.append(len(payloads))
        await original(self, payloads)

    monkeypatch.setattr(FramedStream, "send_many", recording)
    return calls


MIXED = [p.StatsRequest(1), p.SourceStart(2, "nowhere", KEY),
         p.SourceStart(3, "alice-bob", KEY, [float("nan")], [1.0]), p.MemoryStatsRequest(4),
         p.Hello(p.PROTOCOL_VERSION, "alice", TOKENS["alice"]), p.StatsRequest(6)]
EXPECTED = [(p.Stats, None), (p.Error, "unknown"), (p.Error, "bad_request"),
            (p.MemoryStats, None), (p.Error, "not_allowed"), (p.Stats, None)]


async def test_requests_of_one_write_answered_in_order_in_one_write(daemon, monkeypatch):
    alice = await Peer.connect(daemon.port, "alice")
    calls = writes_of_daemon(monkeypatch)
    # one send_all of six frames: the daemon reads them at once (a few hundred bytes)
    await alice.framed.stream.send_all(b"".join(frame(p.encoder.encode(m)) for m in MIXED))
    replies = [await alice.receive() for _ in MIXED]
    assert [(type(r), getattr(r, "code", None)) for r in replies] == EXPECTED
    assert [r.id for r in replies] == [1, 2, 3, 4, None, 6]  # hello inside: no id to echo
    assert not any(r.fatal for r in replies if isinstance(r, p.Error))
    assert calls == [len(MIXED)]  # all six replies in one write
    assert isinstance(await alice.ask(p.StatsRequest(7)), p.Stats)  # still open


async def test_malformed_frame_is_fatal_after_the_replies_before_it(daemon):
    bob = await Peer.connect(daemon.port, "bob")
    await bob.framed.stream.send_all(frame(p.encoder.encode(p.StatsRequest(1)))
                                     + frame(p.encoder.encode(p.StatsRequest(2)))
                                     + frame(b"\xc1 not msgpack")
                                     + frame(p.encoder.encode(p.StatsRequest(4))))
    first, second, error = [await bob.receive() for _ in range(3)]
    assert isinstance(first, p.Stats) and first.id == 1
    assert isinstance(second, p.Stats) and second.id == 2
    assert isinstance(error, p.Error) and error.code == "bad_frame" and error.fatal
    assert await bob.receive() is None  # request 4 is never answered: the connection closed


async def test_client_request_many_replies_in_order_with_errors_in_place(daemon, monkeypatch):
    async with open_daemon("127.0.0.1", daemon.port, "alice", TOKENS["alice"]) as client:
        calls = writes_of_daemon(monkeypatch)
        replies = await client.request_many(
            [(p.StatsRequest, {}), (p.SourceStart, {"link": "nowhere", "prf_key": KEY}),
             (p.MemoryStatsRequest, {}), (p.StatsRequest, {})])
        assert [type(r) for r in replies] == [p.Stats, p.Error, p.MemoryStats, p.Stats]
        assert replies[1].code == "unknown"
        ids = [r.id for r in replies]
        assert ids == sorted(ids) and len(set(ids)) == 4
        assert calls[0] == 4  # the client's four requests in one write
        assert 4 in calls[1:]  # and the daemon's four replies in one
        assert await client.request_many([]) == []
        with pytest.raises(DaemonError, match="unknown"):
            await client.request(p.SourceStart, link="nowhere", prf_key=KEY)


async def test_concurrent_requests_share_writes_and_each_gets_its_reply(daemon):
    async with open_daemon("127.0.0.1", daemon.port, "bob", TOKENS["bob"]) as client:
        got: dict[int, object] = {}

        async def ask(i: int) -> None:
            got[i] = await client.request(p.StatsRequest)

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(ask, i)
        assert sorted(got) == list(range(50))
        assert all(isinstance(r, p.Stats) for r in got.values())
        assert len({r.id for r in got.values()}) == 50
        assert not client._waiting  # nothing left behind


async def test_error_for_an_abandoned_request_does_not_break_the_client(daemon):
    async with open_daemon("127.0.0.1", daemon.port, "alice", TOKENS["alice"]) as client:
        done = await client.request(p.StatsRequest)
        # an error answering an id the client issued but no longer waits on (as for a
        # requester cancelled after its frame was written) is dropped, not raised
        await client.framed.send(p.encoder.encode(p.SourceStart(done.id, "nowhere", KEY)))
        assert isinstance(await client.request(p.StatsRequest), p.Stats)
