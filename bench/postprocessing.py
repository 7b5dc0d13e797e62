"""QKD post-processing throughput on one core: Cascade (Mbit/s of sifted key) and Toeplitz PA.

Cascade: both cores in one process, exchanging messages in memory (no network), 1e5-bit
blocks with exactly QBER * n errors at random positions, shuffles cached per session seed
(``PermutationCache``) and, separately, with a fresh seed per block. Toeplitz: n = 1e5 and 1e6,
output n/2, one-shot (seed FFT included) and with the seed spectrum precomputed.
CPU time (time.process_time) is reported next to wall time: the machine is shared.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from nodes.qkd.cascade import (
    CascadeReceiver,
    CascadeSender,
    ParityQuery,
    PermutationCache,
    cascade_efficiency,
)
from nodes.qkd.toeplitz import ToeplitzHasher, seed_length, toeplitz_hash
from nodes.qkd.verification import verification_tag

RESULT = Path(__file__).resolve().parent / "results" / "postprocessing.json"
CASCADE_N = 100_000
CASCADE_BLOCKS = 8


def _cascade_case(schedule: str, qber: float, fresh_seed: bool) -> dict:
    rng = np.random.default_rng(11)
    n = CASCADE_N
    pairs = []
    for _ in range(CASCADE_BLOCKS):
        alice = rng.integers(0, 2, n, dtype=np.uint8)
        bob = alice.copy()
        bob[rng.choice(n, round(qber * n), replace=False)] ^= 1
        pairs.append((alice, bob))
    perms = None if fresh_seed else PermutationCache(5, n)
    effs, rounds, residual = [], [], 0
    cpu, wall = time.process_time(), time.perf_counter()
    for block, (alice, bob) in enumerate(pairs):
        seed = block if fresh_seed else 5
        tx = CascadeSender(alice, block_id=block, permutations=perms)
        rx = CascadeReceiver(bob, qber, schedule, seed=seed, block_id=block, permutations=perms)
        msg = rx.start()
        while isinstance(msg, ParityQuery):
            msg = rx.receive_reply(tx.receive_query(msg))
        tx.receive_done(msg)
        effs.append(cascade_efficiency(rx.leaked_bits, n, qber))
        rounds.append(rx.rounds)
        residual += int(np.count_nonzero(rx.key != alice))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    bits = n * CASCADE_BLOCKS
    return {
        "schedule": schedule,
        "qber": qber,
        "block_bits": n,
        "blocks": CASCADE_BLOCKS,
        "fresh_seed_per_block": fresh_seed,
        "mbit_per_s_cpu": bits / cpu / 1e6,
        "mbit_per_s_wall": bits / wall / 1e6,
        "efficiency_mean": float(np.mean(effs)),
        "rounds_mean": float(np.mean(rounds)),
        "residual_error_bits": residual,
    }


def _toeplitz_case(n: int, repeats: int) -> dict:
    rng = np.random.default_rng(12)
    m = n // 2
    key = rng.integers(0, 2, n, dtype=np.uint8)
    seed = rng.integers(0, 2, seed_length(n, m), dtype=np.uint8)
    toeplitz_hash(key, seed, m)  # warm-up
    cpu = time.process_time()
    for _ in range(repeats):
        toeplitz_hash(key, seed, m)
    one_shot = time.process_time() - cpu
    hasher = ToeplitzHasher(seed, n, m)
    cpu = time.process_time()
    for _ in range(repeats):
        hasher.hash(key)
    pre = time.process_time() - cpu
    return {
        "n": n,
        "out_len": m,
        "mbit_per_s_one_shot": n * repeats / one_shot / 1e6,
        "mbit_per_s_seed_precomputed": n * repeats / pre / 1e6,
    }


def _verification_case(n: int, repeats: int) -> dict:
    key = np.random.default_rng(13).integers(0, 2, n, dtype=np.uint8)
    cpu = time.process_time()
    for i in range(repeats):
        verification_tag(key, i.to_bytes(32, "big"))
    return {"n": n, "mbit_per_s": n * repeats / (time.process_time() - cpu) / 1e6}


def main() -> dict:
    cascade = [
        _cascade_case(schedule, qber, fresh_seed=False)
        for schedule in ("original", "yanetal", "option7")
        for qber in (0.01, 0.02, 0.03)
    ]
    cascade += [_cascade_case(s, 0.02, fresh_seed=True) for s in ("original", "yanetal")]
    result = {
        "cascade": cascade,
        "toeplitz": [_toeplitz_case(10**5, 20), _toeplitz_case(10**6, 4)],
        "verification": _verification_case(10**5, 20),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
