"""The ``qkd.bb84`` app: the thin trio shell around the sifting cores.

The sender (link end ``a``) starts its source in the daemon with a fresh PRF key, dials the
receiver through the relay, and answers sift requests until the receiver has sifted every
detection. The receiver (``b``) opens its detector, batches its detection records every
``sift_interval_s`` and feeds the replies to its core. Each side returns one result entry
built from what it measured or was told; the orchestrator merges the two.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import trio

from emulator.daemon import protocol as p
from emulator.scenario import BB84App, bb84_link
from nodes.qkd import messages as m
from nodes.qkd.sifting import SiftReceiver, SiftSender
from nodes.sdk import NodeContext

PROTOCOL = "bb84"


def channel_name(link: str) -> str:
    return f"qkd.bb84/{link}"


def key_digest(key_parts: list[np.ndarray]) -> str:
    bits = np.concatenate(key_parts) if key_parts else np.zeros(0, dtype=np.uint8)
    return hashlib.sha256(np.packbits(bits).tobytes() + len(bits).to_bytes(8, "little")).hexdigest()


async def run(node: NodeContext, app: BB84App) -> list[dict]:
    link = bb84_link(node.scenario, app)
    if node.name == app.a:
        return [await run_sender(node, app, link.id)]
    return [await run_receiver(node, app, link.id)]


async def run_sender(node: NodeContext, app: BB84App, link: str) -> dict:
    rng = node.rng(f"bb84/{link}")
    prf_key = rng.bytes(16)
    core = SiftSender(prf_key, [1.0], app.sample_fraction, rng)
    channel = await node.transport.connect(app.b, channel_name(link))
    await node.clock.sleep_until(node.t_start)
    started = await node.daemon.request(p.SourceStart, link=link, prf_key=prf_key)
    await node.event("source_started", link=link, t_start=started.t_start)
    pulses = 0
    daemon_stats: list[p.Stats] = []

    async def stop_source_at_end() -> None:
        nonlocal pulses
        await node.clock.sleep_until(node.t_end)
        stopped = await node.daemon.request(p.SourceStop, link=link)
        pulses = stopped.pulses
        daemon_stats.append(await node.daemon.request(p.StatsRequest))
        channel.post(m.encoder.encode(m.SourceFinished(pulses=pulses)))
        await node.event("source_stopped", link=link, pulses=pulses)

    async def answer() -> None:
        while True:
            message = m.decoder.decode(await channel.receive())
            if isinstance(message, m.SiftRequest):
                channel.post(m.encoder.encode(core.on_sift_request(message)))
            elif isinstance(message, m.SampleResult):
                core.on_sample_result(message)
            elif isinstance(message, m.ReceiverFinished):
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(channel.run_writer)
        nursery.start_soon(stop_source_at_end)
        await answer()
        nursery.cancel_scope.cancel()
    await channel.aclose()
    return {
        "link": link, "a": app.a, "b": app.b, "protocol": PROTOCOL, "role": "sender",
        "pulses": pulses, "sifted_bits": core.sifted_bits, "qber": core.stats.qber,
        "sample_bits": core.stats.sample_bits, "key_sha256_a": key_digest(core.key),
        "source_rate_hz": started.rate_hz,
        "daemon_lag_s": daemon_stats[0].lag_s if daemon_stats else None,
    }


async def run_receiver(node: NodeContext, app: BB84App, link: str) -> dict:
    core = SiftReceiver()
    detections = node.daemon.detections(link)
    await node.daemon.request(p.DetectorOpen, link=link)
    channel = await node.transport.accept(app.a, channel_name(link))
    detections_done = trio.Event()
    all_sifted = trio.Event()
    source_finished = False
    pulses = 0
    t_first_detection: float | None = None
    wall_first_detection: float | None = None

    def check_done() -> None:
        if (detections_done.is_set() and source_finished and not core.buffered
                and not core.outstanding):
            all_sifted.set()

    async def read_detections() -> None:
        nonlocal t_first_detection, wall_first_detection
        async for batch in detections:
            if t_first_detection is None and batch.slot:
                t_first_detection = node.clock.now()
                wall_first_detection = time.time()
            core.add_detections(batch.slot, batch.basis, batch.outcome)
            if batch.last:
                detections_done.set()
                return

    async def send_requests() -> None:
        while not detections_done.is_set():
            with trio.move_on_after(node.clock.wall_duration(app.sift_interval_s)):
                await detections_done.wait()
            request = core.next_request()
            if request is not None:
                channel.post(m.encoder.encode(request))
        check_done()

    async def read_replies() -> None:
        nonlocal pulses, source_finished
        while True:
            message = m.decoder.decode(await channel.receive())
            if isinstance(message, m.SiftReply):
                channel.post(m.encoder.encode(core.on_sift_reply(message)))
            elif isinstance(message, m.SourceFinished):
                pulses = message.pulses
                source_finished = True
            check_done()

    async def report_progress() -> None:
        while True:
            await trio.sleep(1.0)
            await node.metrics(link=link, detections=core.stats.detections,
                               sifted_bits=core.sifted_bits, qber=core.stats.qber)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(channel.run_writer)
        nursery.start_soon(read_detections)
        nursery.start_soon(send_requests)
        nursery.start_soon(read_replies)
        nursery.start_soon(report_progress)
        await all_sifted.wait()
        channel.post(m.encoder.encode(m.ReceiverFinished(batches=core.stats.batches)))
        await channel.drain()
        nursery.cancel_scope.cancel()
    t_done = node.clock.now()
    await channel.aclose()
    rate_hz = node.scenario.link(link).quantum.source.rate_hz
    source_s = pulses / rate_hz
    stats = core.stats
    return {
        "link": link, "a": app.a, "b": app.b, "protocol": PROTOCOL, "role": "receiver",
        "pulses": pulses, "detections": stats.detections, "sifted_bits": core.sifted_bits,
        "sample_bits": stats.sample_bits, "sample_errors": stats.sample_errors,
        "qber": stats.qber, "gain": stats.detections / pulses if pulses else float("nan"),
        "realtime_factor": source_s / (t_done - node.t_start) if t_done > node.t_start else 0.0,
        "first_detection_emu_s": t_first_detection,
        "first_detection_wall": wall_first_detection,
        "key_sha256_b": key_digest(core.key),
    }

