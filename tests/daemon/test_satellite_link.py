"""A photon link whose loss follows a satellite pass: the daemon's detections, binned in time,
match the pass model's gain in every bin (4 binomial sigma), dark counts only below the
minimum elevation."""

from __future__ import annotations

import math
import time

import numpy as np
import trio

from emulator.child_config import DaemonConfig, DaemonLink
from emulator.daemon import protocol as p
from emulator.daemon.server import serve
from emulator.physics.detectors import background_yield, gain
from emulator.scenario import Detector, QuantumLink, SatellitePass, Source
from tests.daemon.test_server import KEY, TOKENS, Peer

TIME_SCALE = 100.0  # 320 emulated seconds of pass in 3.2 wall seconds
RATE_HZ = 1e7
INTENSITIES, PROBABILITIES = [0.8, 0.1, 0.0], [0.5, 0.25, 0.25]  # Liao et al. (2017)
RUN_S, BIN_S = 320.0, 20.0


def pass_link(spec: SatellitePass) -> DaemonConfig:
    quantum = QuantumLink(
        source=Source(rate_hz=RATE_HZ, mu=0.8, decoys=[0.1, 0.0], probabilities=PROBABILITIES),
        detector=Detector(efficiency=0.5, dark_count_probability=1e-6), frame_ms=100.0,
        pass_=spec)
    link = DaemonLink("sat-ground", "sat", "ground", 0.0, quantum)
    return DaemonConfig("test", time.monotonic(), TIME_SCALE, 7,
                        {"sat": TOKENS["alice"], "ground": TOKENS["bob"]}, [link])


async def run_pass(config: DaemonConfig) -> tuple[int, np.ndarray]:
    """Pulses sent and the slots of every detection, over RUN_S of source output."""
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(serve, config)
        sat = await Peer.connect(daemon.port, "sat", TOKENS["alice"])
        ground = await Peer.connect(daemon.port, "ground", TOKENS["bob"])
        assert isinstance(await ground.ask(p.DetectorOpen(1, "sat-ground")), p.DetectorOpened)
        started = await sat.ask(p.SourceStart(1, "sat-ground", KEY, INTENSITIES, PROBABILITIES))
        assert isinstance(started, p.SourceStarted)
        slots: list[np.ndarray] = []
        received = trio.Event()

        async def read_ground():
            while True:
                with trio.fail_after(60):
                    message = p.reply_decoder.decode(await ground.framed.receive())
                assert isinstance(message, p.Detections)
                slots.append(np.frombuffer(message.slot, "<u8"))
                if message.last:
                    received.set()
                    return

        nursery.start_soon(read_ground)
        await trio.sleep((RUN_S + 1.0) / TIME_SCALE)
        await sat.send(p.SourceStop(2, "sat-ground"))
        with trio.fail_after(60):  # the reply waits until the daemon caught up (a loaded host)
            stopped = p.reply_decoder.decode(await sat.framed.receive())
            assert isinstance(stopped, p.SourceStopped)
            await received.wait()
        nursery.cancel_scope.cancel()
    return stopped.pulses, np.concatenate(slots)


def expected_per_bin(spec: SatellitePass, edges_s: np.ndarray, detector: Detector) -> np.ndarray:
    """Mean click probability per pulse in each bin, the pass model averaged over 0.1 s steps."""
    y0 = float(background_yield(detector.dark_count_probability))
    out = []
    for lo, hi in zip(edges_s[:-1], edges_s[1:], strict=True):
        t = np.arange(lo + 0.05, hi, 0.1)  # pass time counts from the source's start
        eta = spec.transmittance(t) * detector.efficiency
        q = sum(w * gain(mu, eta, y0) for mu, w in zip(INTENSITIES, PROBABILITIES, strict=True))
        out.append(float(np.mean(q)))
    return np.array(out)


async def test_gain_follows_the_pass_in_every_time_bin():
    # run t = 0 is 160 s before closest approach; below 25 deg (range > ~1000 km) no link
    spec = SatellitePass(start_s=-160.0, min_elevation_deg=25.0)
    config = pass_link(spec)
    pulses, slots = await run_pass(config)
    assert pulses >= RUN_S * RATE_HZ
    edges = np.arange(0.0, RUN_S + 1e-9, BIN_S)
    counts = np.histogram(slots / RATE_HZ, bins=edges)[0]
    expected = expected_per_bin(spec, edges, config.links[0].quantum.detector)
    n = BIN_S * RATE_HZ  # pulses per bin
    sigma = np.sqrt(n * expected * (1 - expected))
    assert np.all(np.abs(counts - n * expected) <= 4 * sigma), (counts, n * expected)
    # the shape: dark counts only at both ends, several times more signal at closest approach
    loss = spec.loss_at(0.5 * (edges[:-1] + edges[1:]))
    assert math.isinf(loss[0]) and math.isinf(loss[-1]) and loss.min() < 31
    y0_clicks = n * float(background_yield(1e-6))
    assert counts[0] < y0_clicks + 5 * math.sqrt(y0_clicks)
    assert counts.max() > 2.5 * counts[np.isfinite(loss)].min()
