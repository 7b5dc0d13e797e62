"""The ``qkd.bbm92`` app: entanglement-based QKD with a CHSH check (BBM92 + Ekert-style test).

Every heralded pair is measured at once. ``a`` picks Z or X uniformly; ``b`` picks Z or X
(key) or, with probability ``chsh_fraction``, one of the CHSH settings ``(Z +- X)/sqrt2``.
``a`` announces its bases, ``b`` answers with its choices, and ``a`` reveals its outcomes on
the CHSH pairs and on a ``sample_fraction`` of the sifted key (QBER). ``b`` reports the
sifted key, the QBER and ``S = E00 + E01 + E10 - E11`` (``estimate.chsh_from_correlations``;
``2 sqrt2 (4F-1)/3`` for Werner pairs), and the asymptotic secret fraction ``1 - 2 h(Q)``.
"""

from __future__ import annotations

import math
import time

import msgspec
import numpy as np
import trio

from emulator.scenario import BBM92App
from nodes.entanglement import estimate
from nodes.entanglement.qubits import QuantumOps
from nodes.qkd.decoy import binary_entropy
from nodes.sdk import NodeContext

# b's settings: 0 = Z, 1 = X (key), 2 = b0 = (Z+X)/sqrt2, 3 = b1 = (Z-X)/sqrt2 (CHSH)
_B_ROTATION = {2: -math.pi / 4, 3: math.pi / 4}  # RY angle, then measure Z


class Bases(msgspec.Struct, tag="bases", array_like=True):
    """a -> b: pair ids and a's bases (0 = Z, 1 = X); ``last`` when a is done."""

    pairs: list[int]
    bases: bytes
    last: bool = False


class Choices(msgspec.Struct, tag="choices", array_like=True):
    """b -> a: for each announced pair, b's setting (0..3), or 255 when b never had it."""

    settings: bytes
    reveal: bytes  # 1 where a must reveal its outcome (CHSH pairs and the QBER sample)


class Reveal(msgspec.Struct, tag="reveal", array_like=True):
    outcomes: bytes  # a's outcomes where ``reveal`` was 1, in order


Message = Bases | Choices | Reveal
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def link_name(node: NodeContext, app: BBM92App) -> str:
    link = node.scenario.link(app.link) if app.link else node.scenario.link_between(app.a, app.b)
    assert link is not None
    return link.id


def report_name(app: BBM92App) -> str:
    return f"bbm92/{app.a}-{app.b}"


async def _measure_all(ops: QuantumOps, link: str, pick, out: dict, stop: trio.Event) -> None:
    """Measure each heralded half at once with ``pick(n) -> settings``; ``out[pair] = (s, bit)``."""
    while not stop.is_set():
        reply = await ops.pairs(link, max=4096, timeout_s=0.2)
        if not reply.pairs:
            continue
        settings = pick(len(reply.pairs))
        refs = [ops.ref(x.slot) for x in reply.pairs]
        for ref, s in zip(refs, settings, strict=True):
            if s in _B_ROTATION:
                await ops.gate("RY", ref, angle=_B_ROTATION[int(s)])
        bits, _ = await ops.measure_array(refs, ["X" if s == 1 else "Z" for s in settings])
        for x, s, bit in zip(reply.pairs, settings, bits, strict=True):
            out[x.pair] = (int(s), int(bit))


async def run(node: NodeContext, app: BBM92App) -> list[dict]:
    if node.name == app.a:
        return [await run_a(node, app)]
    return [await run_b(node, app)]


async def run_a(node: NodeContext, app: BBM92App) -> dict:
    ops = QuantumOps(node.daemon, node.name)
    link = link_name(node, app)
    channel = await node.transport.connect(app.b, f"bbm92/{link}")
    rng = node.rng(f"bbm92/{link}")
    measured: dict[int, tuple[int, int]] = {}
    stop = trio.Event()
    await node.clock.sleep_until(node.t_start)
    await ops.start_link(link)
    announced = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_measure_all, ops, link, lambda n: rng.integers(0, 2, n), measured,
                           stop)
        deadline = node.clock.wall_at(node.t_end)
        while True:
            await trio.sleep(0.05)
            last = announced + len(measured) >= app.count or time.time() >= deadline
            if last:
                stop.set()
            batch = sorted(measured)[: max(0, app.count - announced)]
            items = [(k, measured.pop(k)) for k in batch]
            await channel.send(_encoder.encode(Bases(
                [k for k, _ in items], bytes(s for _, (s, _) in items), last)))
            choices = _decoder.decode(await channel.receive())
            assert isinstance(choices, Choices)
            reveal = np.frombuffer(choices.reveal, np.uint8).astype(bool)
            bits = np.array([b for _, (_, b) in items], np.uint8)
            await channel.send(_encoder.encode(Reveal(bits[reveal].tobytes())))
            announced += len(items)
            if last:
                break
        nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        await ops.stop_link(link)
    return {"section": "entanglement", "role": "a_end", "name": report_name(app),
            "announced_a": announced}


async def run_b(node: NodeContext, app: BBM92App) -> dict:
    ops = QuantumOps(node.daemon, node.name)
    link = link_name(node, app)
    channel = await node.transport.accept(app.a, f"bbm92/{link}")
    rng = node.rng(f"bbm92/{link}")
    c = app.chsh_fraction
    probs = [(1 - c) / 2, (1 - c) / 2, c / 2, c / 2]
    measured: dict[int, tuple[int, int]] = {}
    stop = trio.Event()
    chsh_rows: list[tuple[int, int, int, int]] = []  # a setting, b setting (0/1), bit a, bit b
    sample_rows: list[tuple[int, int]] = []
    key_bits = 0
    total = 0
    t_begin = node.clock.now()
    await node.clock.sleep_until(node.t_start)
    await ops.start_link(link)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_measure_all, ops, link, lambda n: rng.choice(4, n, p=probs),
                           measured, stop)
        while True:
            bases = _decoder.decode(await channel.receive())
            assert isinstance(bases, Bases)
            if not bases.last:
                with trio.move_on_after(1.0):  # our half is heralded at the same time
                    while any(k not in measured for k in bases.pairs):
                        await trio.sleep(0.002)
            mine = [measured.pop(k, (255, 0)) for k in bases.pairs]
            a_bases = np.frombuffer(bases.bases, np.uint8)
            settings = np.array([s for s, _ in mine], np.uint8)
            b_bits = np.array([b for _, b in mine], np.uint8)
            sifted = (settings < 2) & (settings == a_bases)
            sample = sifted & (rng.random(len(settings)) < app.sample_fraction)
            chsh = (settings >= 2) & (settings != 255)
            reveal = sample | chsh
            await channel.send(_encoder.encode(Choices(settings.tobytes(),
                                                       reveal.astype(np.uint8).tobytes())))
            revealed = np.frombuffer(_decoder.decode(await channel.receive()).outcomes, np.uint8)
            a_bits = np.zeros(len(settings), np.uint8)
            a_bits[reveal] = revealed
            for i in np.flatnonzero(chsh):
                chsh_rows.append((int(a_bases[i]), int(settings[i]) - 2, int(a_bits[i]),
                                  int(b_bits[i])))
            for i in np.flatnonzero(sample):
                sample_rows.append((int(a_bits[i]), int(b_bits[i])))
            key_bits += int((sifted & ~sample).sum())
            total += len(bases.pairs)
            if bases.last:
                break
        nursery.cancel_scope.cancel()
    with trio.CancelScope(shield=True):
        await ops.stop_link(link)
    emulated = max(1e-9, node.clock.now() - max(t_begin, node.t_start))
    return report(app, chsh_rows, sample_rows, key_bits, total, emulated)


def report(app: BBM92App, chsh_rows, sample_rows, key_bits: int, total: int,
           emulated_s: float) -> dict:
    rows = np.array(chsh_rows, dtype=np.int64).reshape(-1, 4)
    e = {}
    se2 = 0.0
    for x in (0, 1):
        for y in (0, 1):
            sel = rows[(rows[:, 0] == x) & (rows[:, 1] == y)]
            e[(x, y)], se = estimate.correlation(sel[:, 2].astype(np.uint8),
                                                 sel[:, 3].astype(np.uint8))
            se2 += se * se
    s = estimate.chsh_from_correlations(e)
    sample = np.array(sample_rows, dtype=np.uint8).reshape(-1, 2)
    q = float(np.mean(sample[:, 0] != sample[:, 1])) if len(sample) else math.nan
    fraction = max(0.0, 1 - 2 * float(binary_entropy(q))) if not math.isnan(q) else 0.0
    return {"section": "entanglement", "role": "report", "name": report_name(app),
            "a": app.a, "b": app.b, "path": [app.a, app.b], "protocol_kind": "bbm92",
            "pairs": total, "pairs_per_s": total / emulated_s,
            "chsh": s, "chsh_std": math.sqrt(se2), "chsh_samples": len(rows),
            "qber": q, "qber_samples": len(sample), "sifted_key_bits": key_bits,
            "secret_fraction": fraction, "secret_key_bits": int(key_bits * fraction),
            "fidelity_mean": None, "fidelity_std": None,
            "purification_rounds": 0, "swap_latency_ms_median": None}
