"""Quantum daemon server: alice/bob exchange over real TCP, information separation,
robustness against bad frames, and the real subprocess with its ready file and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from itertools import pairwise
from pathlib import Path

import msgspec
import numpy as np
import pytest
import trio

from emulator.child_config import DaemonConfig, DaemonLink, write_config
from emulator.daemon import protocol as p
from emulator.daemon.links import photon
from emulator.daemon.server import serve
from emulator.physics.channels import transmittance
from emulator.physics.detection import FrameDetections
from emulator.physics.detectors import background_yield, error_gain_exact, gain
from emulator.prf import sender_choices
from emulator.scenario import QuantumLink, Source
from emulator.wire import HEADER, FramedStream, frame

TOKENS = {"alice": "tok-alice", "bob": "tok-bob", "eve": "tok-eve"}
LENGTH_KM = 25.0
KEY = b"0123456789abcdef"


def make_config(rate_hz: float = 1e8) -> DaemonConfig:
    quantum = QuantumLink(source=Source(rate_hz=rate_hz, mu=0.5), frame_ms=10.0)
    link = DaemonLink("alice-bob", "alice", "bob", LENGTH_KM, quantum)
    return DaemonConfig("test", time.monotonic(), 1.0, 42, dict(TOKENS), [link])


class Peer:
    """A raw node connection: framed bytes in and out, nothing else."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.framed = FramedStream(stream, p.MAX_FRAME)

    @classmethod
    async def connect(cls, port: int, node: str | None = None, token: str | None = None):
        peer = cls(await trio.open_tcp_stream("127.0.0.1", port))
        if node is not None:
            await peer.send(p.Hello(p.PROTOCOL_VERSION, node, token or TOKENS[node]))
            welcome = await peer.receive()
            assert isinstance(welcome, p.Welcome) and welcome.node == node
        return peer

    async def send(self, message) -> None:
        await self.framed.send(p.encoder.encode(message))

    async def receive(self):
        with trio.fail_after(5):
            payload = await self.framed.receive()
        return None if payload is None else p.reply_decoder.decode(payload)

    async def ask(self, message):
        await self.send(message)
        return await self.receive()


async def detections_for(alice: Peer, bob: Peer, link: str,
                         seconds: float) -> tuple[p.SourceStopped, list[p.Detections]]:
    """With alice's source started on ``link``, let it run ``seconds`` while bob reads; then
    stop it: (alice's SourceStopped, bob's Detections up to the last)."""
    messages: list[p.Detections] = []

    async def read_bob() -> None:
        while True:
            message = await bob.receive()
            assert isinstance(message, p.Detections), message
            messages.append(message)
            if message.last:
                return

    async with trio.open_nursery() as inner:
        inner.start_soon(read_bob)
        await trio.sleep(seconds)
        stopped = await alice.ask(p.SourceStop(99, link))  # any id: ask reads the next reply
    assert isinstance(stopped, p.SourceStopped), stopped
    return stopped, messages


@pytest.fixture
async def daemon(nursery):
    return await nursery.start(serve, make_config())


async def test_alice_bob_exchange_and_information_separation(daemon):
    alice = await Peer.connect(daemon.port, "alice")
    bob = await Peer.connect(daemon.port, "bob")
    assert isinstance(await bob.ask(p.DetectorOpen(1, "alice-bob")), p.DetectorOpened)
    started = await alice.ask(p.SourceStart(1, "alice-bob", KEY))
    assert isinstance(started, p.SourceStarted) and started.rate_hz == 1e8
    assert started.slots_per_frame == 1_000_000 and started.intensities == [0.5]

    stopped, frames = await detections_for(alice, bob, "alice-bob", 0.3)
    pulses = stopped.pulses
    assert 0.25e8 < pulses < 0.6e8  # ~0.3 s at 1e8 Hz, generous for a loaded machine

    # contiguous frames [0, pulses), exactly one last
    assert frames[0].frame_start == 0 and frames[-1].frame_end == pulses
    assert all(a.frame_end == b.frame_start for a, b in pairwise(frames))
    assert [f.last for f in frames].count(True) == 1
    slots = np.concatenate([np.frombuffer(f.slot, "<u8") for f in frames])
    basis = np.concatenate([np.frombuffer(f.basis, np.uint8) for f in frames])
    outcome = np.concatenate([np.frombuffer(f.outcome, np.uint8) for f in frames])
    assert slots.size and slots[-1] < pulses

    # the physics arrives intact: gain and sifted QBER within 4 binomial sigma
    detector = make_config().links[0].quantum.detector
    eta = float(transmittance(LENGTH_KM, 0.2)) * detector.efficiency
    q = float(gain(0.5, eta, background_yield(detector.dark_count_probability)))
    assert abs(slots.size - pulses * q) <= 4 * np.sqrt(pulses * q * (1 - q))
    bit, basis_a, _ = sender_choices(KEY, slots, [1.0])
    sifted = basis_a == basis
    e = float(error_gain_exact(0.5, eta, detector.dark_count_probability,
                               detector.misalignment)) / q
    n_sifted = int(sifted.sum())
    assert abs(np.mean(outcome[sifted] != bit[sifted]) - e) <= 4 * np.sqrt(e * (1 - e) / n_sifted)

    stats = await bob.ask(p.StatsRequest(9))
    assert isinstance(stats, p.Stats)
    assert stats.pulses == pulses and stats.detections == slots.size
    assert stats.frames == len(frames) and stats.lag_s >= 0.0  # no frame split at this rate

    # information separation: the sender never got a detection record
    assert set(daemon.sent_by_node["alice"]) == {"welcome", "source_started", "source_stopped"}
    assert daemon.sent_by_node["bob"]["detections"] == len(frames)
    with trio.move_on_after(0.2):
        extra = await alice.framed.receive()
        pytest.fail(f"alice received an unexpected frame: {extra!r}")


async def test_detections_buffered_until_detector_opens(daemon):
    alice = await Peer.connect(daemon.port, "alice")
    bob = await Peer.connect(daemon.port, "bob")
    assert isinstance(await alice.ask(p.SourceStart(1, "alice-bob", KEY)), p.SourceStarted)
    await trio.sleep(0.05)
    stopped = await alice.ask(p.SourceStop(2, "alice-bob"))
    assert isinstance(await bob.ask(p.DetectorOpen(1, "alice-bob")), p.DetectorOpened)
    got = []
    while not (got and got[-1].last):
        got.append(await bob.receive())
    assert got[0].frame_start == 0 and got[-1].frame_end == stopped.pulses


async def test_roles_and_unknown_link_refused_without_closing(daemon):
    bob = await Peer.connect(daemon.port, "bob")
    alice = await Peer.connect(daemon.port, "alice")
    for peer, request, code in [
        (bob, p.SourceStart(1, "alice-bob", KEY), "not_allowed"),
        (bob, p.SourceStop(2, "alice-bob"), "not_allowed"),
        (alice, p.DetectorOpen(3, "alice-bob"), "not_allowed"),
        (alice, p.SourceStop(4, "alice-bob"), "not_allowed"),  # not running
        (alice, p.SourceStart(5, "nowhere", KEY), "unknown"),
        (alice, p.SourceStart(6, "alice-bob", KEY, [0.5, 0.1], [0.5]), "bad_request"),
        (alice, p.Hello(p.PROTOCOL_VERSION, "alice", TOKENS["alice"]), "not_allowed"),
    ]:
        reply = await peer.ask(request)
        assert isinstance(reply, p.Error) and reply.code == code and not reply.fatal
    assert isinstance(await bob.ask(p.StatsRequest(7)), p.Stats)
    assert isinstance(await alice.ask(p.StatsRequest(8)), p.Stats)
    assert daemon.sent_by_node["alice"]["source_started"] == 0


BAD_OPENINGS = {
    "garbage_bytes": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "too_large"),
    "garbage_frame": (frame(b"\xc1\xc1 not msgpack"), "bad_frame"),
    "oversized": (HEADER.pack(p.MAX_FRAME + 1) + b"\x00" * 1000, "too_large"),
    "wrong_token": (frame(p.encoder.encode(p.Hello(p.PROTOCOL_VERSION, "alice", "guess"))),
                    "unauthenticated"),
    "unknown_node": (frame(p.encoder.encode(p.Hello(p.PROTOCOL_VERSION, "mallory", "x"))),
                     "unauthenticated"),
    "bad_version": (frame(p.encoder.encode(p.Hello(99, "alice", TOKENS["alice"]))),
                    "bad_version"),
    "request_before_hello": (frame(p.encoder.encode(p.StatsRequest(1))), "unauthenticated"),
    "reply_type_frame": (frame(p.encoder.encode(p.Welcome(1, "alice", 0.0, 1.0))),
                         "bad_frame"),
}
AFTER_HELLO = {
    "wrongly_typed_field": (frame(msgspec.msgpack.encode({"type": "source_start", "id": "x",
                                                          "link": 1, "prf_key": b""})),
                            "bad_frame"),
    "oversized": (HEADER.pack(2**31) + b"\x00" * 100, "too_large"),
    "garbage_frame": (frame(b"\xff\xfe\xfd"), "bad_frame"),
}


@pytest.mark.parametrize("after_hello,case", [(False, c) for c in BAD_OPENINGS]
                         + [(True, c) for c in AFTER_HELLO])
async def test_bad_frames_close_only_their_connection(daemon, after_hello, case):
    witness = await Peer.connect(daemon.port, "eve")
    assert isinstance(await witness.ask(p.StatsRequest(1)), p.Stats)
    data, code = (AFTER_HELLO if after_hello else BAD_OPENINGS)[case]
    bad = await Peer.connect(daemon.port, "bob" if after_hello else None)
    await bad.framed.stream.send_all(data)
    error = await bad.receive()
    assert isinstance(error, p.Error) and error.code == code and error.fatal
    assert await bad.receive() is None  # closed by the daemon
    assert isinstance(await witness.ask(p.StatsRequest(2)), p.Stats)
    # and new nodes can still connect
    assert isinstance(await (await Peer.connect(daemon.port, "alice")).ask(p.StatsRequest(3)),
                      p.Stats)


async def test_sender_disconnect_ends_the_stream(daemon):
    alice = await Peer.connect(daemon.port, "alice")
    bob = await Peer.connect(daemon.port, "bob")
    await bob.ask(p.DetectorOpen(1, "alice-bob"))
    await alice.ask(p.SourceStart(1, "alice-bob", KEY))
    await trio.sleep(0.03)
    await alice.framed.aclose()
    message = await bob.receive()
    while not message.last:
        message = await bob.receive()
    # the link is free again for a new run
    alice = await Peer.connect(daemon.port, "alice")
    assert isinstance(await alice.ask(p.SourceStart(2, "alice-bob", KEY)), p.SourceStarted)


async def test_subprocess_ready_file_and_sigterm(tmp_path: Path):
    config_path, ready = tmp_path / "daemon.json", tmp_path / "ready.json"
    write_config(config_path, make_config())
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "emulator.daemon", "--config", str(config_path),
         "--ready-file", str(ready)],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        with trio.fail_after(15):
            while not ready.exists():
                assert process.poll() is None, "daemon exited before it was ready"
                await trio.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == process.pid
        peer = await Peer.connect(info["port"], "alice")
        assert isinstance(await peer.ask(p.StatsRequest(1)), p.Stats)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(5):
            assert await process.wait() == 0
    finally:
        if process.poll() is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)


def test_big_frames_split_into_contiguous_messages(monkeypatch):
    monkeypatch.setattr(photon, "MAX_RECORDS_PER_MESSAGE", 3)
    slots = np.array([2, 5, 6, 9, 11, 12, 15], dtype=np.uint64)
    found = FrameDetections(slots, np.zeros(7, np.uint8), np.ones(7, np.uint8))
    messages = photon.detection_messages("l", 0, 20, found, last=True)
    assert [(m.frame_start, m.frame_end) for m in messages] == [(0, 9), (9, 15), (15, 20)]
    assert [m.last for m in messages] == [False, False, True]
    got = np.concatenate([np.frombuffer(m.slot, "<u8") for m in messages])
    np.testing.assert_array_equal(got, slots)
    assert len(photon.detection_messages("l", 0, 20, FrameDetections(
        slots[:0], slots[:0].astype(np.uint8), slots[:0].astype(np.uint8)), last=False)) == 1
