"""A photon link with real detectors through the daemon: dead time saturates each detector's
count rate as R = r/(1 + r tau), afterpulses arrive, and no detector counts while blind."""

from __future__ import annotations

import time

import numpy as np

from emulator.child_config import DaemonConfig, DaemonLink
from emulator.daemon import protocol as p
from emulator.daemon.server import serve
from emulator.physics import detector_effects as fx
from emulator.physics.detectors import background_yield, gain
from emulator.scenario import Detector, QuantumLink, Source
from tests.daemon.test_server import KEY, TOKENS, Peer, detections_for

DEAD_SLOTS = 10  # 100 ns at 100 MHz


def config(afterpulse_probability: float) -> DaemonConfig:
    detector = Detector(efficiency=0.1, dead_time_ns=100.0,
                        afterpulse_probability=afterpulse_probability, afterpulse_decay_ns=200.0)
    quantum = QuantumLink(source=Source(rate_hz=1e8, mu=0.5), frame_ms=10.0, detector=detector)
    link = DaemonLink("alice-bob", "alice", "bob", 0.0, quantum)
    return DaemonConfig("test", time.monotonic(), 1.0, 7, dict(TOKENS), [link])


async def run_link(nursery, afterpulse_probability: float):
    daemon = await nursery.start(serve, config(afterpulse_probability))
    alice = await Peer.connect(daemon.port, "alice")
    bob = await Peer.connect(daemon.port, "bob")
    assert isinstance(await bob.ask(p.DetectorOpen(1, "alice-bob")), p.DetectorOpened)
    assert isinstance(await alice.ask(p.SourceStart(1, "alice-bob", KEY)), p.SourceStarted)
    stopped, frames = await detections_for(alice, bob, "alice-bob", 0.15)
    slot = np.concatenate([np.frombuffer(f.slot, "<u8") for f in frames]).astype(np.int64)
    outcome = np.concatenate([np.frombuffer(f.outcome, np.uint8) for f in frames])
    return stopped.pulses, slot, outcome, daemon


async def test_dead_time_saturates_the_count_rate(nursery):
    """~1.5e7 pulses, p ~ 0.0245 per detector: ~3e5 counts each (renewal variance)."""
    pulses, slot, outcome, daemon = await run_link(nursery, 0.0)
    q = float(gain(0.5, 0.1, background_yield(1e-6))) / 2
    m, var = DEAD_SLOTS + 1 / q, (1 - q) / q**2
    for d in (0, 1):
        mine = slot[outcome == d]
        assert np.all(np.diff(mine) > DEAD_SLOTS)
        expected = pulses * float(fx.counted_rate(q, DEAD_SLOTS))
        assert abs(mine.size - expected) <= 4 * np.sqrt(pulses * var / m**3)
    assert daemon.photon_links["alice-bob"].dead_time_blocked > 0.15 * slot.size


async def test_afterpulses_counted_and_dead_time_kept(nursery):
    pulses, slot, outcome, daemon = await run_link(nursery, 0.1)
    link = daemon.photon_links["alice-bob"]
    assert link.afterpulses > 0 and link.counters()["afterpulses"] == link.afterpulses
    for d in (0, 1):
        assert np.all(np.diff(slot[outcome == d]) > DEAD_SLOTS)
    assert np.all(np.diff(slot) > 0) and slot[-1] < pulses
