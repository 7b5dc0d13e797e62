"""The ``qkd.bb84`` app: the thin trio shell around the sifting and post-processing cores.

The sender (link end ``a``) starts its source in the daemon with a fresh PRF key, dials the
receiver through the relay, and answers until the receiver has processed every detection.
The receiver (``b``) opens its detector, batches its detection records every
``sift_interval_s`` and feeds the replies to its cores. Every message on the channel is
authenticated (``AuthenticatedLink``: Wegman-Carter, NACK and resend around rejects). Each
side returns one result entry from what it measured or was told; the orchestrator merges them.
"""

from __future__ import annotations

import time

import numpy as np
import trio

from emulator.daemon import protocol as p
from emulator.physics.entropy import binary_entropy
from nodes import remote_errors
from nodes.errors import BlockRejected, RemoteProtocolError, UnexpectedMessage
from nodes.qkd import messages as m
from nodes.qkd.auth import Authenticator
from nodes.qkd.bb84.pass_results import sift_batches
from nodes.qkd.bb84.receiver import ReceiverRun
from nodes.qkd.bb84.spec import BB84App, link_of
from nodes.qkd.blocks import PostprocessingConfig, decoy_estimate
from nodes.qkd.delivery import deliver_blocks
from nodes.qkd.keystore import KeyStore
from nodes.qkd.postprocessing import ReceiverPostprocessing, SenderPostprocessing
from nodes.qkd.rejection import post_processing_step
from nodes.qkd.secure_channel import SecureChannel
from nodes.qkd.sifting import SIGNAL, SiftReceiver, SiftSender
from nodes.sdk import NodeContext

PROTOCOL = "bb84"
BOOTSTRAP_AUTH_KEYS = 4096


def channel_name(link: str) -> str:
    return f"qkd.bb84/{link}"


def _config(app: BB84App, source) -> PostprocessingConfig:
    return PostprocessingConfig(
        intensities=tuple(source.intensities), probabilities=tuple(source.intensity_probabilities),
        block_bits=app.block_bits, min_block_bits=app.min_block_bits, schedule=app.cascade,
        qber_abort=app.qber_abort, eps_pa=app.eps_pa, finite_key=app.finite_key,
        eps_sec=app.eps_sec, eps_cor=app.eps_cor,
        photon_numbers=(tuple(tuple(float(x) for x in pn)
                              for pn in source.photon_number_distributions())
                        if app.decoy_estimator == "lp" else None))


async def run(node: NodeContext, app: BB84App) -> list[dict]:
    link = link_of(node.view, app)
    if node.name == app.a:
        return [await run_sender(node, app, link.id)]
    return [await run_receiver(node, app, link.id)]


async def run_sender(node: NodeContext, app: BB84App, link: str) -> dict:
    source = node.view.link(link).quantum.source
    rng = node.rng(f"bb84/{link}")
    prf_key = rng.bytes(16)
    config = _config(app, source)
    sift = SiftSender(prf_key, source.intensity_probabilities, app.sample_fraction, rng,
                      key_rule=config.key_rule)
    post = SenderPostprocessing(config, node.rng(f"bb84/{link}/pp")) \
        if app.postprocessing else None
    store = KeyStore(app.b)
    channel = await node.transport.connect(app.b, channel_name(link))
    secure = SecureChannel(channel, Authenticator("initiator", app.psk.encode(),
                                                  bootstrap_keys=BOOTSTRAP_AUTH_KEYS))
    await node.clock.sleep_until(node.t_start)
    daemon_cpu_start = (await node.daemon.request(p.StatsRequest)).cpu_s
    cpu_start = time.process_time()
    started = await node.daemon.request(p.SourceStart, link=link, prf_key=prf_key,
                                        intensities=source.intensities,
                                        probabilities=source.intensity_probabilities)
    await node.event("source_started", link=link, t_start=started.t_start)
    stopped: list[tuple[p.SourceStopped, p.Stats]] = []  # filled once, when the source stops
    rejected: list[RemoteProtocolError] = []

    async def stop_source() -> None:
        with trio.CancelScope(shield=True):  # also when a peer error ends the session
            result = await node.daemon.request(p.SourceStop, link=link)
            stopped.append((result, await node.daemon.request(p.StatsRequest)))
        secure.post(m.SourceFinished(pulses=result.pulses))
        await node.event("source_stopped", link=link, pulses=result.pulses)

    async def stop_source_at_end() -> None:
        await node.clock.sleep_until(node.t_end)
        await stop_source()

    def entry() -> dict:
        result, stats = stopped[0] if stopped else (None, None)
        return {
            "link": link, "a": app.a, "b": app.b, "protocol": PROTOCOL, "role": "sender",
            "cpu_s_a": time.process_time() - cpu_start,
            "cpu_s_daemon": stats.cpu_s - daemon_cpu_start if stats else None,
            "pulses": result.pulses if result else 0,
            "sifted_bits": sum(len(r.key) for r in sift.records.values()),
            "key_sha256_a": store.digest(), "secret_bits_a": store.total_bits,
            "auth_rejected": secure.link.rejected, "source_rate_hz": started.rate_hz,
            "daemon_lag_s": stats.lag_s if stats else None,
            "blocks_rejected_a": len(rejected),
        }

    async def answer() -> None:
        async for message in secure.messages():
            if isinstance(message, m.SiftRequest):
                secure.post(sift.on_sift_request(message))
            elif isinstance(message, m.SampleResult):
                record = sift.on_sample_result(message)
                if post is not None:
                    post.add_record(record)
            elif isinstance(message, m.ReceiverFinished):
                return
            elif post is not None:
                for out in await post_processing_step(node, link, post, message, rejected):
                    secure.post(out)
                if await deliver_blocks(node, link, PROTOCOL, store, secure, post.finished):
                    node.partial(entry())
            else:
                raise UnexpectedMessage(f"{type(message).__name__} without post-processing")

    errors: list[RemoteProtocolError] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.run_writer)
            nursery.start_soon(secure.run_timer)
            nursery.start_soon(stop_source_at_end)
            await answer()
            nursery.cancel_scope.cancel()
    except* RemoteProtocolError as group:
        errors = await remote_errors.report_group(node, link, group)
        if not stopped:
            await stop_source()
    await channel.aclose()
    return {**entry(), "remote_errors_a": len(errors) + len(rejected)}


async def run_receiver(node: NodeContext, app: BB84App, link: str) -> dict:
    """Sift and post-process until ``ReceiverRun`` is done; its core decides, this moves
    bytes: detections from the daemon, the sift timer, the sender's messages."""
    source = node.view.link(link).quantum.source
    config = _config(app, source)
    sift = SiftReceiver(len(source.intensities), key_rule=config.key_rule)
    post = ReceiverPostprocessing(config, node.rng(f"bb84/{link}/pp")) \
        if app.postprocessing else None
    store = KeyStore(app.a)
    detections = node.daemon.detections(link)
    await node.daemon.request(p.DetectorOpen, link=link)
    await node.clock.sleep_until(node.t_start)
    cpu_start = time.process_time()
    channel = await node.transport.accept(app.a, channel_name(link))
    secure = SecureChannel(channel, Authenticator("responder", app.psk.encode(),
                                                  bootstrap_keys=BOOTSTRAP_AUTH_KEYS))
    run = ReceiverRun(sift, post, app.sift_interval_s, node.clock.now())
    all_done = trio.Event()

    def send(outs: list) -> None:
        for out in outs:
            secure.post(out)

    def entry() -> dict:
        result = receiver_entry(sift, post, store, config, run.pulses or 0, source.rate_hz)
        result.update({
            "link": link, "a": app.a, "b": app.b, "protocol": PROTOCOL, "role": "receiver",
            "auth_rejected": secure.link.rejected, "cpu_s_b": time.process_time() - cpu_start,
            "first_detection_emu_s": run.t_first_detection,
            "first_detection_wall": run.wall_first_detection,
            "blocks_rejected": len(run.rejected)})
        if node.view.link(link).quantum.pass_ is not None:  # key rate against time
            result["sift_batches"] = sift_batches(sift.records.values())
        return result

    async def read_detections() -> None:
        async for batch in detections:
            send(run.on_detections(batch, node.clock.now(), time.time()))
            if run.done:
                all_done.set()
            if batch.last:
                return

    async def sift_timer() -> None:
        while (deadline := run.deadline()) is not None:
            await node.clock.sleep_until(deadline)
            send(run.on_timer(node.clock.now()))

    async def read_replies() -> None:
        async for message in secure.messages():
            try:
                send(run.on_message(message))
            except BlockRejected as exc:
                await remote_errors.report(node, link, [exc])
                send(run.reject(exc))
            if post is not None and await deliver_blocks(node, link, PROTOCOL, store, secure,
                                                         post.finished):
                node.partial(entry())
            if run.done:
                all_done.set()

    async def report_progress() -> None:
        while True:
            await trio.sleep(1.0)
            done = [r for r in sift.records.values() if r.complete]
            checked = sum(r.sample_bits + (0 if r.revealed is None else int(r.revealed[SIGNAL]))
                          for r in done)  # signal bits compared openly so far
            await node.metrics(link=link, detections=int(sum(
                r.detections.sum() for r in sift.records.values())),
                sifted_bits=sum(len(r.key) for r in sift.records.values()),
                qber=sum(int(r.errors[SIGNAL]) for r in done) / checked if checked else None,
                secret_bits=store.total_bits)

    errors: list[RemoteProtocolError] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.run_writer)
            async with trio.open_nursery() as readers:
                readers.start_soon(secure.run_timer)
                readers.start_soon(read_detections)
                readers.start_soon(sift_timer)
                readers.start_soon(read_replies)
                readers.start_soon(report_progress)
                await all_done.wait()
                # the sender closes on ReceiverFinished: stop reading before we say it
                readers.cancel_scope.cancel()
            secure.post(m.ReceiverFinished(batches=len(sift.records)))
            await channel.drain()
            nursery.cancel_scope.cancel()
    except* RemoteProtocolError as group:
        errors = await remote_errors.report_group(node, link, group)
    t_done = node.clock.now()
    await channel.aclose()
    pulses = run.pulses or 0
    return {**entry(), "remote_errors": len(errors) + len(run.rejected),
            "completion_factor": (pulses / source.rate_hz) / (t_done - node.t_start)
            if t_done > node.t_start else 0.0}


def receiver_entry(sift: SiftReceiver, post: ReceiverPostprocessing | None, store: KeyStore,
                   config: PostprocessingConfig, pulses: int, rate_hz: float) -> dict:
    """The receiver's measurements: counts, estimates per intensity, post-processing totals."""
    records = sorted(sift.records.values(), key=lambda r: r.batch)
    n = len(config.intensities)
    detections = sum((r.detections for r in records), np.zeros(n, np.int64))
    errors = sum((r.errors for r in records), np.zeros(n, np.int64))
    sample = sum(r.sample_bits for r in records)
    sent = [pulses * prob for prob in config.probabilities]
    gains = [float(d / s) if s else None for d, s in zip(detections, sent)]
    revealed = sum((r.revealed for r in records), np.zeros(n, np.int64))
    checked = revealed + np.eye(n, dtype=np.int64)[SIGNAL] * sample  # bits compared openly
    qbers = [float(errors[i] / checked[i]) if checked[i] else None for i in range(n)]
    labels = [f"{mu:g}" for mu in config.intensities]
    source_s = pulses / rate_hz if rate_hz else 0.0
    entry: dict = {
        "pulses": pulses, "detections": int(detections.sum()),
        "sifted_bits": sum(len(r.key) for r in records), "sample_bits": sample,
        "sample_errors": int(errors[SIGNAL]), "qber": qbers[0], "gain": gains[SIGNAL],
        "gain_by_intensity": dict(zip(labels, gains)),
        "qber_by_intensity": dict(zip(labels, qbers)),
        "secret_bits": store.total_bits, "key_sha256_b": store.digest(),
        "secret_bits_per_pulse": store.total_bits / pulses if pulses else 0.0,
        "secret_key_rate_bps": store.total_bits / source_s if source_s else 0.0,
    }
    if post is None:
        return entry
    ok = [b for b in post.blocks if b.status == "ok"]
    reconciled = sum(b.n for b in ok)
    leaked = sum(b.leaked_bits for b in ok)
    qber_ok = (sum(b.estimate.e_mu * b.n for b in ok) / reconciled) if reconciled else 0.0
    shannon = reconciled * float(binary_entropy(qber_ok))
    processed = [r for b in post.blocks for r in b.records]
    pooled = decoy_estimate(processed, post.blocks[0].slot_start, post.blocks[-1].slot_end,
                            config) if post.blocks and not config.finite_key else None
    finite = [b.finite for b in ok if b.finite is not None]
    entry.update({
        "pa_output_bits": sum(b.out_len for b in ok),
        "auth_key_bits": sum(b.auth_bits for b in ok),
        "reconciled_bits": reconciled, "ec_leaked_bits": leaked,
        "ec_efficiency": leaked / shannon if shannon else None,
        "y1_lower": pooled.y1_lower if pooled else None,
        "e1_upper": pooled.e1_upper if pooled else None,
        "blocks_ok": len(ok),
        "blocks_failed": sum(b.status == "failed_verification" for b in post.blocks),
        "blocks_aborted": sum(b.status == "aborted" for b in post.blocks),
        "processed_slots": (post.blocks[-1].slot_end - post.blocks[0].slot_start)
        if post.blocks else 0,
        "cascade": config.schedule,
        "key_length_model": "finite-key (Lim et al. 2014)" if config.finite_key
        else "asymptotic GLLP (vacuum + weak decoy)",
    })
    if finite:
        entry["finite_key"] = {
            "single_photon_key_bits_lower": sum(f.s_key1 for f in finite),
            "vacuum_key_bits_lower": sum(f.s_key0 for f in finite),
            "phase_error_upper_mean": float(np.mean([f.phi for f in finite])),
        }
    return entry

