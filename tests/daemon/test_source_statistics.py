"""Non-Poissonian sources through the daemon: each intensity's click rate follows its P(n)
(``sources.click_probability``) within 4 binomial sigma, not the Poisson gain of its mean."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import trio

from emulator.child_config import DaemonConfig, DaemonLink
from emulator.daemon import protocol as p
from emulator.daemon.server import serve
from emulator.physics import channels, detectors, sources
from emulator.prf import choices_from_words, intensity_thresholds, slot_words
from emulator.scenario import Detector, QuantumLink, Source
from tests.daemon.test_server import KEY, TOKENS, Peer

TIME_SCALE = 10.0
RATE_HZ = 1e6
RUN_S = 2.0
PROBABILITIES = [0.5, 0.25, 0.25]


def link_config(source: Source, length_km: float = 10.0) -> tuple[DaemonConfig, Detector]:
    detector = Detector(efficiency=0.5, dark_count_probability=1e-5)
    quantum = QuantumLink(source=source, detector=detector, frame_ms=50.0)
    link = DaemonLink("a-b", "a", "b", length_km, quantum)
    config = DaemonConfig("test", time.monotonic(), TIME_SCALE, 3,
                          {"a": TOKENS["alice"], "b": TOKENS["bob"]}, [link])
    return config, detector


async def run_source(config: DaemonConfig, intensities: list[float]):
    """(SourceStarted or Error, slots of every detection, pulses sent)."""
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(serve, config)
        a = await Peer.connect(daemon.port, "a", TOKENS["alice"])
        b = await Peer.connect(daemon.port, "b", TOKENS["bob"])
        assert isinstance(await b.ask(p.DetectorOpen(1, "a-b")), p.DetectorOpened)
        started = await a.ask(p.SourceStart(1, "a-b", KEY, intensities, PROBABILITIES))
        if not isinstance(started, p.SourceStarted):
            nursery.cancel_scope.cancel()
            return started, None, 0
        slots: list[np.ndarray] = []
        received = trio.Event()

        async def read_b():
            while True:
                message = await b.receive()
                slots.append(np.frombuffer(message.slot, "<u8"))
                if message.last:
                    received.set()
                    return

        nursery.start_soon(read_b)
        await trio.sleep(RUN_S / TIME_SCALE)
        stopped = await a.ask(p.SourceStop(2, "a-b"))
        with trio.fail_after(30):
            await received.wait()
        nursery.cancel_scope.cancel()
    return started, np.concatenate(slots), stopped.pulses


@pytest.mark.parametrize("kind", ["thermal", "spdc"])
async def test_click_rates_follow_the_photon_number_distribution(kind):
    intensities = [0.5, 0.1, 0.0] if kind == "thermal" else [0.1, 0.02, 0.0]
    source = Source(kind=kind, rate_hz=RATE_HZ, mu=intensities[0], decoys=intensities[1:],
                    probabilities=PROBABILITIES, herald_efficiency=0.6)
    config, detector = link_config(source)
    _, slots, pulses = await run_source(config, intensities)
    # each slot's intensity from the sender's PRF (the test plays the sender here)
    _, _, index = choices_from_words(slot_words(KEY, slots), intensity_thresholds(PROBABILITIES))
    every = np.arange(pulses, dtype=np.uint64)
    _, _, sent_index = choices_from_words(slot_words(KEY, every),
                                          intensity_thresholds(PROBABILITIES))
    eta = float(channels.transmittance(10.0, 0.2)) * detector.efficiency
    y0 = float(detectors.background_yield(detector.dark_count_probability))
    for k, pn in enumerate(source.photon_number_distributions()):
        n = int(np.sum(sent_index == k))
        q = sources.click_probability(pn, eta, y0)
        clicks = int(np.sum(index == k))
        assert abs(clicks - n * q) < 4 * math.sqrt(n * q * (1 - q)) + 1, (k, clicks, n * q)
        if kind == "spdc" and intensities[k] > 0:  # far from the Poisson gain of its mean
            poisson = float(detectors.gain(intensities[k], eta, y0))
            assert abs(clicks - n * poisson) > 10 * math.sqrt(n * q)


async def test_table_source_refuses_an_intensity_it_has_no_row_for():
    source = Source(kind="table", rate_hz=RATE_HZ, mu=0.5, decoys=[0.1, 0.0],
                    probabilities=PROBABILITIES,
                    photon_numbers=[[0.6, 0.3, 0.1], [0.9, 0.1], [1.0]])
    config, _ = link_config(source)
    reply, _, _ = await run_source(config, [0.5, 0.2, 0.0])
    assert isinstance(reply, p.Error) and reply.code == "bad_request"
