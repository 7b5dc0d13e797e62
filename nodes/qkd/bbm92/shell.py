"""The ``qkd.bbm92`` app: entanglement-based QKD with a CHSH check, then full post-processing.

Every heralded pair is measured at once. ``a`` picks Z or X uniformly; ``b`` picks Z or X
(key) or, with probability ``chsh_fraction``, one of the CHSH settings ``(Z +- X)/sqrt2``.
Sifting takes two authenticated messages per batch (sans-I/O functions below): ``b``
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
import time
from dataclasses import dataclass

import msgspec
import numpy as np
import trio

from emulator.physics.entropy import binary_entropy
from nodes.entanglement import estimate
from nodes.entanglement.qubits import QuantumOps
from nodes.qkd import messages as m
from nodes.qkd.auth import Authenticator
from nodes.qkd.bbm92.spec import BBM92App
from nodes.qkd.delivery import deliver_blocks
from nodes.qkd.keystore import KeyStore
from nodes.qkd.postprocessing import (
    PostprocessingConfig,
    ReceiverPostprocessing,
    SenderPostprocessing,
)
from nodes.qkd.secure_channel import SecureChannel
from nodes.qkd.sifting import BatchRecord
from nodes.sdk import NodeContext

BOOTSTRAP_AUTH_KEYS = 4096
MISSING = 255  # setting/basis of a pair this end never measured
# b's settings: 0 = Z, 1 = X (key), 2 = b0 = (Z+X)/sqrt2, 3 = b1 = (Z-X)/sqrt2 (CHSH)
_B_ROTATION = {2: -math.pi / 4, 3: math.pi / 4}  # RY angle, then measure Z
GATES_IN_FLIGHT = 256  # concurrent rotation requests to the daemon


class Announce(msgspec.Struct, tag="bbm92_announce"):
    """b -> a: a batch of pairs b measured, its settings (0..3), a sample mask over them
    (packed bits, set only on Z/X settings) and b's outcomes where CHSH or sampled."""

    batch: int
    pairs: bytes  # uint64 LE pair ids
    settings: bytes  # uint8
    sample: bytes  # numpy.packbits of the mask
    outcomes: bytes  # uint8, b's bits where (setting >= 2) | sample, in order
    last: bool = False


class Answer(msgspec.Struct, tag="bbm92_answer"):
    """a -> b: a's basis per announced pair (0 = Z, 1 = X, 255 = never had it) and a's
    outcomes on the CHSH pairs and the sifted sample pairs, in order."""

    batch: int
    bases: bytes
    outcomes: bytes


class Done(msgspec.Struct, tag="bbm92_done"):
    """b -> a: every batch is post-processed; a may close."""

    batches: int


Message = Announce | Answer | Done | m.Message
decoder = msgspec.msgpack.Decoder(Message)


# ---------------------------------------------------------------------------------------------
# Sifting: pure functions, the same at both ends


@dataclass(frozen=True)
class Sifted:
    """One batch after the answer, as both ends compute it from the two messages."""

    sifted: np.ndarray  # bool per pair: Z/Z or X/X
    sample: np.ndarray  # bool: sifted and in b's sample mask (disclosed, not key)
    chsh: np.ndarray  # bool: b in a CHSH setting and a has the pair
    a_bases: np.ndarray  # uint8
    settings: np.ndarray  # uint8

    @property
    def key(self) -> np.ndarray:
        return self.sifted & ~self.sample


def b_reveals(settings: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Positions where b discloses its outcome in ``Announce``."""
    return (settings >= 2) | mask


def sift(settings: np.ndarray, mask: np.ndarray, a_bases: np.ndarray) -> Sifted:
    a_has = a_bases != MISSING
    sifted = (settings < 2) & (a_bases == settings)
    return Sifted(sifted, sifted & mask, (settings >= 2) & a_has, a_bases, settings)


def a_reveals(s: Sifted) -> np.ndarray:
    """Positions where a discloses its outcome in ``Answer``."""
    return s.chsh | s.sample


def announce(batch: int, pairs: np.ndarray, settings: np.ndarray, bits: np.ndarray,
             mask: np.ndarray, last: bool) -> Announce:
    return Announce(batch, pairs.astype("<u8").tobytes(), settings.astype(np.uint8).tobytes(),
                    np.packbits(mask).tobytes(), bits[b_reveals(settings, mask)].tobytes(),
                    last)


def decode_announce(msg: Announce) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pairs, settings, mask, b's disclosed outcomes)."""
    pairs = np.frombuffer(msg.pairs, "<u8")
    settings = np.frombuffer(msg.settings, np.uint8)
    mask = np.unpackbits(np.frombuffer(msg.sample, np.uint8), count=len(pairs)).astype(bool)
    outcomes = np.frombuffer(msg.outcomes, np.uint8)
    if len(settings) != len(pairs) or len(outcomes) != int(b_reveals(settings, mask).sum()):
        raise ValueError(f"batch {msg.batch}: announce lengths disagree")
    return pairs, settings, mask, outcomes


def batch_record(batch: int, pairs_before: int, s: Sifted, a_bits_shown: np.ndarray,
                 b_bits_shown: np.ndarray, own_bits: np.ndarray) -> BatchRecord:
    """The post-processing record: identical at both ends except for ``key`` (own bits).

    ``a_bits_shown``/``b_bits_shown`` are both ends' outcomes at the sample positions; one
    'intensity'; ``slot_end`` counts pairs processed so far (monotone, as the cores need)."""
    n = len(s.settings)
    errors = int(np.count_nonzero(a_bits_shown != b_bits_shown))
    return BatchRecord(batch, pairs_before + n, np.array([n], np.int64),
                       np.array([int(s.sifted.sum())], np.int64), np.array([errors], np.int64),
                       int(s.sample.sum()), own_bits[s.key].astype(np.uint8), complete=True)


def _spread(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """An array over all pairs with ``values`` at ``where`` (zeros elsewhere)."""
    out = np.zeros(len(where), np.uint8)
    out[where] = values
    return out


# ---------------------------------------------------------------------------------------------
# The trio shell


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
        eps_pa=app.eps_pa, entangled=True)


async def _measure_all(ops: QuantumOps, link: str, pick, out: dict, stop: trio.Event) -> None:
    """Measure each heralded half at once with ``pick(n) -> settings``; ``out[pair] = (s, bit)``.

    Rotations for the CHSH settings go to the daemon concurrently (it answers in order of
    arrival; one request per qubit is what the protocol offers)."""
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
        for x, s, bit in zip(reply.pairs, settings, bits, strict=True):
            out[x.pair] = (int(s), int(bit))


async def run(node: NodeContext, app: BBM92App) -> list[dict]:
    if node.name == app.a:
        return [await run_a(node, app)]
    return [await run_b(node, app)]


async def run_a(node: NodeContext, app: BBM92App) -> dict:
    """a: measures in Z/X, answers b's announcements, follows b's post-processing."""
    ops = QuantumOps(node.daemon, node.name)
    link = link_name(node, app)
    channel = await node.transport.connect(app.b, f"bbm92/{link}")
    secure = SecureChannel(channel, Authenticator("initiator", app.psk.encode(),
                                                  bootstrap_keys=BOOTSTRAP_AUTH_KEYS),
                           decoder=decoder)
    rng = node.rng(f"bbm92/{link}")
    post = SenderPostprocessing(_config(app), node.rng(f"bbm92/{link}/pp"))
    store = KeyStore(app.b)
    measured: dict[int, tuple[int, int]] = {}
    stop = trio.Event()
    answered = 0
    await node.clock.sleep_until(node.t_start)
    await ops.start_link(link)

    async def on_announce(msg: Announce) -> None:
        nonlocal answered
        pairs, settings, mask, b_shown = decode_announce(msg)
        if msg.last:
            stop.set()
        else:
            with trio.move_on_after(1.0):  # our half is heralded at the same time
                while any(int(k) not in measured for k in pairs):
                    await trio.sleep(0.002)
        mine = [measured.pop(int(k), (MISSING, 0)) for k in pairs]
        a_bases = np.array([s for s, _ in mine], np.uint8)
        a_bits = np.array([b for _, b in mine], np.uint8)
        s = sift(settings, mask, a_bases)
        shown = a_reveals(s)
        secure.post(Answer(msg.batch, a_bases.tobytes(), a_bits[shown].tobytes()))
        b_bits = _spread(b_shown, b_reveals(settings, mask))
        post.add_record(batch_record(msg.batch, answered, s, a_bits[s.sample],
                                     b_bits[s.sample], a_bits))
        answered += len(pairs)

    async def follow() -> None:
        async for message in secure.messages():
            if isinstance(message, Announce):
                await on_announce(message)
            elif isinstance(message, Done):
                return
            else:
                for out in post.on_message(message):
                    secure.post(out)
                await deliver_blocks(node, link, "bbm92", store, secure, post.finished)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(channel.run_writer)
        nursery.start_soon(secure.run_timer)
        nursery.start_soon(_measure_all, ops, link, lambda n: rng.integers(0, 2, n), measured,
                           stop)
        await follow()
        nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        await ops.stop_link(link)
        await channel.aclose()
    return {"section": "entanglement", "role": "a_end", "name": report_name(app),
            "announced_a": answered, "key_sha256_a": store.digest(),
            "secret_bits_a": store.total_bits, "auth_rejected_a": secure.link.rejected}


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
    channel = await node.transport.accept(app.a, f"bbm92/{link}")
    secure = SecureChannel(channel, Authenticator("responder", app.psk.encode(),
                                                  bootstrap_keys=BOOTSTRAP_AUTH_KEYS),
                           decoder=decoder)
    rng = node.rng(f"bbm92/{link}")
    config = _config(app)
    post = ReceiverPostprocessing(config, node.rng(f"bbm92/{link}/pp"))
    store = KeyStore(app.a)
    c = app.chsh_fraction
    probs = [(1 - c) / 2, (1 - c) / 2, c / 2, c / 2]
    measured: dict[int, tuple[int, int]] = {}
    stop = trio.Event()
    pending: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # settings, mask, bits
    tally = _Tally([], [])
    all_done = trio.Event()
    sent_last = answered_last = False
    t_begin = node.clock.now()
    await node.clock.sleep_until(node.t_start)
    await ops.start_link(link)

    async def announce_batches() -> None:
        nonlocal sent_last
        deadline = node.clock.wall_at(node.t_end)
        announced, batch = 0, 0
        while not sent_last:
            await trio.sleep(min(app.sift_interval_s, max(0.0, deadline - time.time())))
            sent_last = announced + len(measured) >= app.count or time.time() >= deadline
            if sent_last:
                stop.set()
            ids = sorted(measured)[: max(0, app.count - announced)]
            items = [measured.pop(k) for k in ids]
            settings = np.array([s for s, _ in items], np.uint8)
            bits = np.array([b for _, b in items], np.uint8)
            mask = (settings < 2) & (rng.random(len(ids)) < app.sample_fraction)
            pending[batch] = (settings, mask, bits)
            secure.post(announce(batch, np.array(ids, np.uint64), settings, bits, mask,
                                 sent_last))
            announced += len(ids)
            batch += 1

    def on_answer(msg: Answer) -> list:
        nonlocal answered_last
        settings, mask, b_bits = pending.pop(msg.batch)
        a_bases = np.frombuffer(msg.bases, np.uint8)
        if len(a_bases) != len(settings):
            raise ValueError(f"batch {msg.batch}: {len(a_bases)} bases for {len(settings)}")
        s = sift(settings, mask, a_bases)
        a_bits = _spread(np.frombuffer(msg.outcomes, np.uint8), a_reveals(s))
        tally.chsh_rows.append(np.stack([a_bases[s.chsh], settings[s.chsh] - 2,
                                         a_bits[s.chsh], b_bits[s.chsh]], axis=1))
        tally.sample_rows.append(np.stack([a_bits[s.sample], b_bits[s.sample]], axis=1))
        record = batch_record(msg.batch, tally.pairs, s, a_bits[s.sample], b_bits[s.sample],
                              b_bits)
        tally.key_bits += len(record.key)
        tally.pairs += len(settings)
        out = post.add_record(record)
        if sent_last and not pending:
            answered_last = True
            out += post.finish()
        return out

    async def read() -> None:
        async for message in secure.messages():
            if isinstance(message, Answer):
                outs = on_answer(message)
            else:
                outs = post.on_message(message)
            for out in outs:
                secure.post(out)
            await deliver_blocks(node, link, "bbm92", store, secure, post.finished)
            if answered_last and post.idle:
                all_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(channel.run_writer)
        async with trio.open_nursery() as readers:
            readers.start_soon(secure.run_timer)
            readers.start_soon(_measure_all, ops, link, lambda n: rng.choice(4, n, p=probs),
                               measured, stop)
            readers.start_soon(announce_batches)
            readers.start_soon(read)
            await all_done.wait()
            readers.cancel_scope.cancel()  # a closes on Done: stop reading before we say it
        secure.post(Done(len(post.blocks)))
        await channel.drain()
        nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        await ops.stop_link(link)
        await channel.aclose()
    emulated = max(1e-9, node.clock.now() - max(t_begin, node.t_start))
    entry = report(app, tally, emulated)
    entry.update(postprocessing_entry(post, store))
    entry["auth_rejected_b"] = secure.link.rejected
    return entry


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
        "cascade": post.config.schedule,
        "key_length_model": "entanglement-based: n [1 - h(e)] - leak - verification "
                            "- 2 log2(1/eps_pa)",
    }
