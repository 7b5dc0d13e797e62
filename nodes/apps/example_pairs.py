"""Example external program: measure EPR pairs at both ends and estimate their fidelity.

Run by a node for an ``external`` app (``command = ["python", "-m", "nodes.apps.example_pairs",
"COUNT"]``), as its own process, through the node's local app socket only. Both ends measure
every pair in a Pauli basis derived from the pair id; ``a`` sends its outcomes to ``b`` over
a classical channel; ``b`` prints the report as its last stdout line (JSON).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time

import msgspec
import numpy as np

from nodes.apps.client import AppClient
from nodes.entanglement import estimate

BATCH = 4096


class Batch(msgspec.Struct, array_like=True):
    pairs: list[int]
    outcomes: bytes
    last: bool = False


def basis(pair: int) -> str:
    return "XYZ"[hashlib.blake2b(pair.to_bytes(8, "little"), digest_size=2).digest()[0] % 3]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with AppClient.from_env() as client:
        info = client.info
        link = info.links[info.peer]
        channel = client.open_channel(info.peer, "example_pairs", dial=info.role == "a")
        client.start_link(link)
        if info.role == "a":
            run_a(client, link, channel, count)
        else:
            run_b(client, link, channel)
        client.stop_link(link)


def measure(client: AppClient, link: str) -> tuple[list[int], np.ndarray, list[str]]:
    delivered = client.pairs(link, max=BATCH, timeout_s=0.5).pairs
    ids = [x.pair for x in delivered]
    bases = [basis(i) for i in ids]
    if not ids:
        return [], np.zeros(0, np.uint8), []
    reply = client.measure([client.ref(x.slot) for x in delivered], bases)
    return ids, np.frombuffer(reply.outcomes, np.uint8), bases


def run_a(client: AppClient, link: str, channel: int, count: int) -> None:
    sent = 0
    deadline = client.info.t_end
    t0 = time.perf_counter()
    while sent < count and client.now() < deadline:
        ids, bits, _ = measure(client, link)
        ids, bits = ids[: count - sent], bits[: count - sent]
        client.send(channel, msgspec.msgpack.encode(Batch(ids, bits.tobytes())))
        sent += len(ids)
    client.send(channel, msgspec.msgpack.encode(Batch([], b"", last=True)))
    print(json.dumps({"section": "entanglement", "role": "a_end",
                      "name": f"example/{client.node}-{client.info.peer}", "measured_a": sent,
                      "wall_s_a": time.perf_counter() - t0}))


def run_b(client: AppClient, link: str, channel: int) -> None:
    mine: dict[int, tuple[str, int]] = {}
    joined = {b: ([], []) for b in "XYZ"}
    t0, t_emu0 = time.perf_counter(), client.now()
    n = 0
    while True:
        batch = msgspec.msgpack.decode(client.receive(channel), type=Batch)
        if batch.last:
            break
        deadline = time.monotonic() + 5.0
        while any(i not in mine for i in batch.pairs) and time.monotonic() < deadline:
            ids, bits, bases = measure(client, link)
            mine.update(zip(ids, zip(bases, bits.tolist(), strict=True), strict=True))
        for i, bit_a in zip(batch.pairs, batch.outcomes, strict=True):
            if i in mine:
                b, bit_b = mine.pop(i)
                joined[b][0].append(bit_a)
                joined[b][1].append(bit_b)
                n += 1
    wall = time.perf_counter() - t0
    samples = {b: (np.array(x, np.uint8), np.array(y, np.uint8)) for b, (x, y) in joined.items()}
    f, se = estimate.fidelity_from_correlations(samples)
    print(json.dumps({"section": "entanglement", "role": "report",
                      "name": f"example/{client.info.peer}-{client.node}",
                      "a": client.info.peer, "b": client.node,
                      "path": [client.info.peer, client.node], "pairs": n,
                      "pairs_per_s": n / max(1e-9, client.now() - t_emu0),
                      "pairs_per_wall_s": n / wall, "fidelity_mean": f, "fidelity_std": se,
                      "chsh": None, "purification_rounds": 0,
                      "swap_latency_ms_median": None}))


if __name__ == "__main__":
    main()
