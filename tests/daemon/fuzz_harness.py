"""Fuzz harness for the daemon's framing and request decoding (tests/daemon/test_fuzz.py runs
it briefly, ``python -m bench fuzz_daemon`` for longer).

``run_session`` serves one connection of a real ``Daemon`` over trio memory streams, feeds it
the given chunks (optionally after a valid hello), reads every reply until the daemon closes
and checks the invariants: every reply decodes as a ``Reply``, a fatal ``Error`` is the last
frame, the session ends by itself, and no request reached a handler bug (``internal_errors``).
"""

from __future__ import annotations

import time

import msgspec
import trio
import trio.testing
from hypothesis import strategies as st

from emulator.child_config import DaemonConfig, DaemonEntanglementLink, DaemonLink
from emulator.daemon import protocol as p
from emulator.daemon.server import Daemon
from emulator.daemon.session import SessionLimits
from emulator.scenario import LinkEntanglement, NodeMemory, QuantumLink, Source
from emulator.wire import HEADER, FramedStream

TOKENS = {"alice": "tok-alice", "bob": "tok-bob"}
SESSION_TIMEOUT_S = 10.0


def config() -> DaemonConfig:
    quantum = QuantumLink(source=Source(rate_hz=1e6, mu=0.5), frame_ms=10.0)
    ent = DaemonEntanglementLink("ab", "alice", "bob", 1.0, LinkEntanglement(attempt_rate_hz=1e3))
    return DaemonConfig("fuzz", time.time(), 1.0, 3, dict(TOKENS),
                        [DaemonLink("alice-bob", "alice", "bob", 1.0, quantum)],
                        memories={"alice": NodeMemory(slots=4), "bob": NodeMemory(slots=4)},
                        entanglement_links=[ent])


def framed(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


HELLO = framed(p.encoder.encode(p.Hello(p.PROTOCOL_VERSION, "alice", TOKENS["alice"])))


async def _session(chunks: list[bytes], authenticate: bool) -> tuple[list, dict]:
    daemon = Daemon(config(), SessionLimits(hello_timeout_s=2.0))
    replies: list = []
    with trio.fail_after(SESSION_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            daemon.nursery = nursery
            client, server = trio.testing.memory_stream_pair()
            served = trio.Event()

            async def serve() -> None:
                await daemon.sessions.handle(server)
                served.set()

            nursery.start_soon(serve)
            for chunk in ([HELLO] if authenticate else []) + chunks:
                try:
                    await client.send_all(chunk)
                except trio.BrokenResourceError:
                    break  # the daemon closed first
            await client.send_stream.aclose()
            reader = FramedStream(client, p.MAX_FRAME)
            while True:
                try:
                    payload = await reader.receive()
                except trio.BrokenResourceError:
                    break
                if payload is None:
                    break
                replies.append(p.reply_decoder.decode(payload))  # must be a valid reply
            await served.wait()
            nursery.cancel_scope.cancel()  # sources or link tasks a request may have started
    return replies, dict(daemon.sessions.counters)


def run_session(chunks: list[bytes], authenticate: bool) -> list:
    """Serve ``chunks`` on one connection; assert the invariants; return the replies."""
    replies, counters = trio.run(_session, chunks, authenticate)
    assert counters.get("internal_errors", 0) == 0, counters
    fatal = [i for i, r in enumerate(replies) if isinstance(r, p.Error) and r.fatal]
    assert fatal in ([], [len(replies) - 1]), replies
    if authenticate:
        assert isinstance(replies[0], p.Welcome) or fatal == [0], replies
    return replies


# -- strategies ------------------------------------------------------------------------------

leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
          | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=40))
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30)
TAGS = [t.__struct_config__.tag for t in p.Request.__args__] + ["welcome", "nope", ""]
FIELDS = sorted({f for t in p.Request.__args__ for f in t.__struct_fields__})


@st.composite
def request_like(draw) -> bytes:
    """A map with a request tag and fields named like request fields, values of any type."""
    body = {"type": draw(st.sampled_from(TAGS))}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True)):
        body[name] = draw(values | st.sampled_from(["alice-bob", "ab", ["alice", 0]]))
    return msgspec.msgpack.encode(body)


VALID = [
    p.StatsRequest(1), p.MemoryStatsRequest(2), p.SourceStart(3, "alice-bob", b"k" * 16),
    p.SourceStop(4, "alice-bob"), p.DetectorOpen(5, "alice-bob"), p.EntangleStart(6, "ab"),
    p.EntangleStop(7, "ab"), p.PairAwait(8, "ab", timeout_s=0.01), p.QubitPrepare(9, 1.0, 2.0),
    p.QubitGate(10, "H", [p.QubitRef("alice", 0)]),
    p.QubitGate(11, "ROT", [p.QubitRef("alice", 0)], angle=0.3, axis=(1.0, 0.0, 0.0)),
    p.QubitMeasure(12, [p.QubitRef("alice", 0)], ["X"]),
    p.BellMeasure(13, p.QubitRef("alice", 0), p.QubitRef("alice", 1)),
    p.QubitDiscard(14, [p.QubitRef("alice", 1)]),
]


@st.composite
def mutated(draw) -> bytes:
    """A valid request's encoding with a few bytes flipped, dropped or inserted."""
    data = bytearray(p.encoder.encode(draw(st.sampled_from(VALID))))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "drop", "insert"]))
        if op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "drop":
            del data[i]
        else:
            data.insert(i, draw(st.integers(0, 255)))
    return bytes(data)


deep = st.builds(lambda d, head: head + b"\x91" * d + b"\xc0",
                 st.integers(1, 300_000), st.sampled_from([b"", b"\x82\xa4type\xa5stats\xa1x"]))
payloads = (st.binary(max_size=300) | request_like() | mutated() | deep
            | st.sampled_from(VALID).map(p.encoder.encode))


@st.composite
def streams(draw) -> list[bytes]:
    """Frames of fuzzed payloads (sometimes with a wrong length), cut at random points."""
    data = bytearray()
    for payload in draw(st.lists(payloads, min_size=1, max_size=6)):
        if draw(st.integers(0, 9)) == 0:
            data += HEADER.pack(draw(st.integers(0, 2**32 - 1))) + payload
        else:
            data += framed(payload)
    if draw(st.booleans()):
        data += draw(st.binary(max_size=50))  # trailing garbage or half a frame
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    return [bytes(data[a:b]) for a, b in zip([0, *cuts], [*cuts, len(data)]) if b > a]
