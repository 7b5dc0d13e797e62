"""The ``qkd.bbm92`` app: entanglement-based QKD with a CHSH check, then full post-processing.

Every heralded pair is measured at once. ``a`` picks Z or X uniformly; ``b`` picks Z or X
(key) or, with probability ``chsh_fraction``, one of the CHSH settings ``(Z +- X)/sqrt2``.
Sifting takes two authenticated messages per batch (sans-I/O cores in ``sifting.py``): ``b``
announces its pairs, settings, a random sample mask and its outcomes on the CHSH and sample
pairs; ``a`` answers with its bases and its outcomes on the CHSH pairs and the sifted sample.
Both ends then hold the same ``BatchRecord`` (only the key differs) and feed it to the QKD
post-processing cores (``nodes.qkd.postprocessing``, entanglement-based length
n [1 - h(e)] - leak_EC - verification - 2 log2(1/eps_pa)); ``b`` corrects with Cascade.
``b`` reports S = E00 + E01 + E10 - E11 (``2 sqrt2 (4F-1)/3`` for Werner pairs), the QBER
and the post-processing totals; ``a`` reports its key hash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import trio

from emulator.physics.entropy import binary_entropy
from nodes import remote_errors
from nodes.entanglement import estimate
from nodes.entanglement.qubits import QuantumOps
from nodes.errors import RemoteProtocolError
from nodes.qkd.auth import Authenticator
from nodes.qkd.bbm92.sifting import (
    Announce,
    Announcer,
    Answer,
    Answerer,
    Done,
    batch_record,
    decode_announce,
    decoder,
)
from nodes.qkd.bbm92.spec import BBM92App
from nodes.qkd.blocks import PostprocessingConfig
from nodes.qkd.delivery import deliver_blocks
from nodes.qkd.keystore import KeyStore
from nodes.qkd.postprocessing import ReceiverPostprocessing, SenderPostprocessing
from nodes.qkd.rejection import post_processing_step
from nodes.qkd.secure_channel import SecureChannel
from nodes.sdk import NodeContext
from nodes.transport import Channel

BOOTSTRAP_AUTH_KEYS = 4096
# b's settings: 0 = Z, 1 = X (key), 2 = b0 = (Z+X)/sqrt2, 3 = b1 = (Z-X)/sqrt2 (CHSH)
_B_ROTATION = {2: -math.pi / 4, 3: math.pi / 4}  # RY angle, then measure Z
GATES_IN_FLIGHT = 256  # concurrent rotation requests to the daemon


def link_name(node: NodeContext, app: BBM92App) -> str:
    link = node.view.find_link(app.link, app.a, app.b)
    assert link is not None
    return link.id


def report_name(app: BBM92App) -> str:
    return f"bbm92/{app.a}-{app.b}"


def _config(app: BBM92App) -> PostprocessingConfig:
    return PostprocessingConfig(
        intensities=(1.0,), probabilities=(1.0,), block_bits=app.block_bits,
        min_block_bits=app.min_block_bits, schedule=app.cascade, qber_abort=app.qber_abort,
        eps_pa=app.eps_pa, entangled=True, sift_messages=2)  # Announce, Answer


@dataclass
class Measured:
    """Heralded halves measured so far (pair id -> (setting, bit)); ``changed`` fires after
    every batch, so a waiter needs no polling."""

    outcomes: dict[int, tuple[int, int]] = field(default_factory=dict)
    changed: trio.Event = field(default_factory=trio.Event)

    def add(self, pairs, settings, bits) -> None:
        for x, s, bit in zip(pairs, settings, bits, strict=True):
            self.outcomes[x.pair] = (int(s), int(bit))
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, ids) -> None:
        while any(int(k) not in self.outcomes for k in ids):
            await self.changed.wait()


async def _measure_all(ops: QuantumOps, link: str, pick, out: Measured,
                       stop: trio.Event) -> None:
    """Measure each heralded half at once with ``pick(n) -> settings`` until ``stop``.

    Stopped by an event, not cancelled, so no daemon request is cut in half. Rotations for
    the CHSH settings go to the daemon concurrently (it answers in order of arrival; one
    request per qubit is what the protocol offers)."""
    while not stop.is_set():
        reply = await ops.pairs(link, max=4096, timeout_s=0.2)
        if not reply.pairs:
            continue
        settings = pick(len(reply.pairs))
        refs = [ops.ref(x.slot) for x in reply.pairs]
        rotate = [(ref, _B_ROTATION[int(s)]) for ref, s in zip(refs, settings, strict=True)
                  if int(s) in _B_ROTATION]
        for start in range(0, len(rotate), GATES_IN_FLIGHT):
            async with trio.open_nursery() as gates:
                for ref, angle in rotate[start:start + GATES_IN_FLIGHT]:
                    gates.start_soon(lambda r=ref, a=angle: ops.gate("RY", r, angle=a))
        bits, _ = await ops.measure_array(refs, ["X" if s == 1 else "Z" for s in settings])
        out.add(reply.pairs, settings, bits)


async def run(node: NodeContext, app: BBM92App) -> list[dict]:
    if node.name == app.a:
        return [await run_a(node, app)]
    return [await run_b(node, app)]


async def _open_channel(node: NodeContext, app: BBM92App, link: str,
                        role: str) -> tuple[Channel, SecureChannel]:
    """The authenticated channel to the peer: ``a`` dials it (initiator), ``b`` accepts it."""
    name = f"bbm92/{link}"
    if role == "initiator":
        channel = await node.transport.connect(app.b, name)
    else:
        channel = await node.transport.accept(app.a, name)
    auth = Authenticator(role, app.psk.encode(), bootstrap_keys=BOOTSTRAP_AUTH_KEYS)
    return channel, SecureChannel(channel, auth, decoder=decoder)


async def run_a(node: NodeContext, app: BBM92App) -> dict:
    """a: measures in Z/X, answers b's announcements, follows b's post-processing."""
    ops = QuantumOps(node.daemon, node.name)
    link = link_name(node, app)
    channel, secure = await _open_channel(node, app, link, "initiator")
    rng = node.rng(f"bbm92/{link}")
    post = SenderPostprocessing(_config(app), node.rng(f"bbm92/{link}/pp"))
    store = KeyStore(app.b)
    measured = Measured()
    answerer = Answerer()
    rejected: list[RemoteProtocolError] = []
    await node.clock.sleep_until(node.t_start)
    await ops.start_link(link)

    def entry() -> dict:
        return {"section": "entanglement", "role": "a_end", "name": report_name(app),
                "announced_a": answerer.answered, "key_sha256_a": store.digest(),
                "secret_bits_a": store.total_bits, "auth_rejected_a": secure.link.rejected,
                "auth_key_bits_used_a": secure.link.auth.key_bits_used,
                "blocks_rejected_a": len(rejected)}

    async def follow() -> None:
        async for message in secure.messages():
            if isinstance(message, Announce):
                pairs = decode_announce(message)[0]
                if message.last:
                    stop.set()  # b measures nothing more: neither do we
                else:
                    with trio.move_on_after(1.0):  # our half is heralded at the same time
                        await measured.wait_for(pairs)
                answer, record = answerer.answer(message, measured.outcomes)
                secure.post(answer)
                post.add_record(record)
            elif isinstance(message, Done):
                return
            else:
                for out in await post_processing_step(node, link, post, message, rejected):
                    secure.post(out)
                if await deliver_blocks(node, link, "bbm92", store, secure, post.finished):
                    node.partial(entry())

    stop = trio.Event()
    errors: list[RemoteProtocolError] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.run_writer)
            nursery.start_soon(secure.run_timer)
            nursery.start_soon(_measure_all, ops, link, lambda n: rng.integers(0, 2, n),
                               measured, stop)
            await follow()
            nursery.cancel_scope.cancel()
    except* RemoteProtocolError as group:
        errors = await remote_errors.report_group(node, link, group)
    with trio.CancelScope(shield=True):
        await ops.stop_link(link)
        await channel.aclose()
    return {**entry(), "remote_errors_a": len(errors) + len(rejected)}


@dataclass
class _Tally:
    """What b accumulates for the report."""

    chsh_rows: list  # arrays (a setting, b setting 0/1, bit a, bit b)
    sample_rows: list  # arrays (bit a, bit b)
    key_bits: int = 0
    pairs: int = 0


async def run_b(node: NodeContext, app: BBM92App) -> dict:
    """b: measures in Z/X/CHSH settings, drives sifting and post-processing (Cascade side)."""
    ops = QuantumOps(node.daemon, node.name)
    link = link_name(node, app)
    channel, secure = await _open_channel(node, app, link, "responder")
    rng = node.rng(f"bbm92/{link}")
    config = _config(app)
    post = ReceiverPostprocessing(config, node.rng(f"bbm92/{link}/pp"))
    store = KeyStore(app.a)
    c = app.chsh_fraction
    probs = [(1 - c) / 2, (1 - c) / 2, c / 2, c / 2]
    measured = Measured()
    announcer = Announcer(app.count, app.sample_fraction, rng)
    tally = _Tally([], [])
    rejected: list[RemoteProtocolError] = []
    all_done, stop = trio.Event(), trio.Event()
    t_begin = node.clock.now()
    await node.clock.sleep_until(node.t_start)
    await ops.start_link(link)

    def entry() -> dict:
        emulated = max(1e-9, node.clock.now() - max(t_begin, node.t_start))
        result = report(app, tally, emulated)
        result.update(postprocessing_entry(post, store))
        result.update(auth_rejected_b=secure.link.rejected, blocks_rejected=len(rejected),
                      auth_key_bits_used_b=secure.link.auth.key_bits_used)
        return result

    async def announce_batches() -> None:
        deadline = node.clock.wall_at(node.t_end)
        while not announcer.sent_last:
            await trio.sleep(min(app.sift_interval_s, max(0.0, deadline - node.clock.wall())))
            message = announcer.announce(measured.outcomes, node.clock.wall() >= deadline)
            if announcer.sent_last:
                stop.set()
            secure.post(message)

    def on_answer(msg: Answer) -> list:
        done = announcer.on_answer(msg)
        s, a_bits, b_bits = done.sifted, done.a_bits, done.b_bits
        tally.chsh_rows.append(np.stack([s.a_bases[s.chsh], s.settings[s.chsh] - 2,
                                         a_bits[s.chsh], b_bits[s.chsh]], axis=1))
        tally.sample_rows.append(np.stack([a_bits[s.sample], b_bits[s.sample]], axis=1))
        record = batch_record(msg.batch, tally.pairs, s, a_bits[s.sample], b_bits[s.sample],
                              b_bits)
        tally.key_bits += len(record.key)
        tally.pairs += len(s.settings)
        out = post.add_record(record)
        if announcer.answered_last:
            out += post.finish()
        return out

    async def read() -> None:
        async for message in secure.messages():
            if isinstance(message, Answer):
                outs = on_answer(message)
            else:
                outs = await post_processing_step(node, link, post, message, rejected)
            for out in outs:
                secure.post(out)
            if await deliver_blocks(node, link, "bbm92", store, secure, post.finished):
                node.partial(entry())
            if announcer.answered_last and post.idle:
                all_done.set()

    errors: list[RemoteProtocolError] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(channel.run_writer)
            async with trio.open_nursery() as readers:
                readers.start_soon(secure.run_timer)
                readers.start_soon(_measure_all, ops, link,
                                   lambda n: rng.choice(4, n, p=probs), measured, stop)
                readers.start_soon(announce_batches)
                readers.start_soon(read)
                await all_done.wait()
                readers.cancel_scope.cancel()  # a closes on Done: stop reading before we say it
            secure.post(Done(len(post.blocks)))
            await channel.drain()
            nursery.cancel_scope.cancel()
    except* RemoteProtocolError as group:
        errors = await remote_errors.report_group(node, link, group)
    with trio.CancelScope(shield=True):
        await ops.stop_link(link)
        await channel.aclose()
    return {**entry(), "remote_errors": len(errors) + len(rejected)}


def report(app: BBM92App, tally: _Tally, emulated_s: float) -> dict:
    """CHSH S with its standard error, the QBER sample and the pair counts."""
    rows = np.concatenate(tally.chsh_rows or [np.zeros((0, 4), np.uint8)]).astype(np.int64)
    e = {}
    se2 = 0.0
    for x in (0, 1):
        for y in (0, 1):
            sel = rows[(rows[:, 0] == x) & (rows[:, 1] == y)]
            e[(x, y)], se = estimate.correlation(sel[:, 2].astype(np.uint8),
                                                 sel[:, 3].astype(np.uint8))
            se2 += se * se
    s = estimate.chsh_from_correlations(e)
    sample = np.concatenate(tally.sample_rows or [np.zeros((0, 2), np.uint8)])
    q = float(np.mean(sample[:, 0] != sample[:, 1])) if len(sample) else math.nan
    return {"section": "entanglement", "role": "report", "name": report_name(app),
            "a": app.a, "b": app.b, "path": [app.a, app.b], "protocol_kind": "bbm92",
            "pairs": tally.pairs, "pairs_per_s": tally.pairs / emulated_s,
            "chsh": s, "chsh_std": math.sqrt(se2), "chsh_samples": len(rows),
            "qber": q, "qber_samples": len(sample), "sifted_key_bits": tally.key_bits,
            "secret_fraction_asymptotic": max(0.0, 1 - 2 * float(binary_entropy(q)))
            if not math.isnan(q) else 0.0,
            "fidelity_mean": None, "fidelity_std": None,
            "purification_rounds": 0, "swap_latency_ms_median": None}


def postprocessing_entry(post: ReceiverPostprocessing, store: KeyStore) -> dict:
    """Post-processing totals at b: delivered key, Cascade leakage and efficiency, blocks."""
    ok = [b for b in post.blocks if b.status == "ok"]
    reconciled = sum(b.n for b in ok)
    leaked = sum(b.leaked_bits for b in ok)
    shannon = sum(b.n * float(binary_entropy(b.estimate.e_mu)) for b in ok)
    return {
        "secret_bits": store.total_bits, "key_sha256_b": store.digest(),
        "reconciled_bits": reconciled, "ec_leaked_bits": leaked,
        "ec_efficiency": leaked / shannon if shannon else None,
        "pa_output_bits": sum(b.out_len for b in ok),
        "auth_key_bits": sum(b.auth_bits for b in ok),
        "blocks_ok": len(ok),
        "blocks_failed": sum(b.status == "failed_verification" for b in post.blocks),
        "blocks_aborted": sum(b.status == "aborted" for b in post.blocks),
        "block_qber": [b.estimate.e_mu for b in post.blocks],
        # what each block's auth refill pays for: 2 messages per batch, 2 per Cascade round
        "block_batches": [len(b.records) for b in post.blocks],
        "block_cascade_rounds": [b.cascade_rounds for b in post.blocks],
        "cascade": post.config.schedule,
        "key_length_model": "entanglement-based: n [1 - h(e)] - leak - verification "
                            "- 2 log2(1/eps_pa)",
    }
