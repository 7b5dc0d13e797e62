"""1000-node repeater chain on the state engine alone (no processes): wall time and fidelity.

Each end-to-end pair: all 999 links attempt heralded generation (geometric number of attempts),
each repeater does its BSM as soon as both its memories hold a pair (swap-asap, through
``QuantumMemories.bell_measure``, fast path, lazy T2 dephasing), outcomes travel to the end
nodes at fibre speed (+ an optional per-message software delay) and end B applies the net
Pauli correction. The delivered fidelity is compared with the exact model (Werner chain
convolved with the dephasing of the total storage time, below). Writes
bench/results/repeater_chain.json.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

from emulator.daemon.memories import MemorySpec, QuantumMemories
from emulator.physics import bell_diagonal as bd
from emulator.physics import memories
from emulator.physics.channels import FIBRE_GROUP_DELAY_S_PER_KM
from emulator.physics.heralding import heralding_probability

RESULT = Path(__file__).resolve().parent / "results" / "repeater_chain.json"

NODES = 1000
PAIRS = 100
LINK_KM = 2.0
FIBRE_DB_PER_KM = 0.2
DETECTOR_EFFICIENCY = 0.9
BSM_EFFICIENCY = 0.5  # linear-optics midpoint BSM
SOURCE_FIDELITY = 0.9999
DELAY_S_PER_KM = FIBRE_GROUP_DELAY_S_PER_KM


def link_success_probability() -> float:
    """Heralding probability per attempt of one link (midpoint BSM, ``heralding``)."""
    return heralding_probability(LINK_KM, FIBRE_DB_PER_KM, DETECTOR_EFFICIENCY, BSM_EFFICIENCY)


def werner_chain_fidelity(f: float, links: int) -> float:
    """Werner pairs of fidelity ``f`` swapped ``links - 1`` times (``werner_chain``)."""
    return bd.werner_chain([f] * links)


def dephased(f: float, storage_s: float, t2: float) -> float:
    """Werner pair after a Z channel with coherence ``exp(-storage/T2)`` (``dephased_werner``).
    Exact for the chain: every noise here is a Pauli channel, so all links and all stored
    qubits' dephasing compose by convolution and only the total storage time matters."""
    return memories.dephased_werner(f, 0.0 if math.isinf(t2) else storage_s / t2)


def run_case(t2: float, stack_delay_s: float, pairs: int = PAIRS, nodes: int = NODES,
             seed: int = 2024) -> dict:
    rng = np.random.default_rng(seed)
    links = nodes - 1
    p = link_success_probability()
    attempt_s = LINK_KM * DELAY_S_PER_KM  # emission to midpoint and herald back: L/2 + L/2
    names = [f"n{i}" for i in range(nodes)]
    mem = QuantumMemories({n: MemorySpec(2, t2=t2) for n in names})
    # distance (in links) from repeater j to the farther end decides when its outcome is known
    hop_s = LINK_KM * DELAY_S_PER_KM + stack_delay_s
    fids, predicted, storage, t_deliver_all = [], [], [], []
    t_start = 0.0
    wall = time.perf_counter()
    for _ in range(pairs):
        ready = t_start + rng.geometric(p, size=links) * attempt_s  # link i: node i - node i+1
        refs = [mem.store_pair(names[i], names[i + 1], bd.werner_coefficients(SOURCE_FIDELITY),
                               float(ready[i])) for i in range(links)]
        swap_at = np.maximum(ready[:-1], ready[1:])  # repeater j = 1..links-1 at swap_at[j-1]
        frame = 0
        for j0 in np.argsort(swap_at, kind="stable"):
            j = int(j0) + 1
            m1, m2 = mem.bell_measure(names[j], refs[j - 1][1], refs[j][0],
                                      float(swap_at[j0]), rng)
            frame ^= bd.bell_index(m1, m2)
        js = np.arange(1, links)
        heard_b = swap_at + (links - js) * hop_s  # outcome of repeater j reaches B
        heard_a = swap_at + js * hop_s  # and A (which must know the pair is ready)
        t_deliver = float(max(heard_a.max(), heard_b.max()))
        a, b = refs[0][0], refs[-1][1]
        mem.apply_pauli(names[-1], b, bd.BELL_PAULI[frame], t_deliver)
        fids.append(mem.fidelity(a, b, t_deliver))
        # total storage: both halves of each link from generation to their BSM / delivery
        end_left = np.concatenate(([t_deliver], swap_at))  # node i's half of link i
        end_right = np.concatenate((swap_at, [t_deliver]))  # node i+1's half of link i
        tau = float(np.sum(end_left - ready) + np.sum(end_right - ready))
        storage.append(tau)
        predicted.append(dephased(werner_chain_fidelity(SOURCE_FIDELITY, links), tau, t2))
        mem.discard(names[0], a, t_deliver)
        mem.discard(names[-1], b, t_deliver)
        t_deliver_all.append(t_deliver - t_start)
        t_start = t_deliver
    wall = time.perf_counter() - wall
    fids, predicted = np.array(fids), np.array(predicted)
    return {
        "nodes": nodes,
        "links": links,
        "pairs": pairs,
        "t2_s": None if math.isinf(t2) else t2,
        "stack_delay_s_per_hop": stack_delay_s,
        "link_success_probability": p,
        "wall_s": wall,
        "pairs_per_wall_s": pairs / wall,
        "swaps_per_wall_s": pairs * (links - 1) / wall,
        "emulated_s_per_pair_mean": float(np.mean(t_deliver_all)),
        "total_storage_s_mean": float(np.mean(storage)),
        "fidelity_mean": float(fids.mean()),
        "fidelity_std": float(fids.std()),
        "fidelity_model_mean": float(predicted.mean()),
        "max_abs_deviation_from_model": float(np.max(np.abs(fids - predicted))),
        "werner_chain_fidelity_no_memory_noise": werner_chain_fidelity(SOURCE_FIDELITY, links),
    }


def main() -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cases = [run_case(math.inf, 0.0), run_case(1.0, 0.0), run_case(1.0, 1e-4)]
    result = {
        "benchmark": "repeater_chain",
        "model": "swap-asap, Werner sources, T2 dephasing (T1 = inf), fast path",
        "source_fidelity": SOURCE_FIDELITY,
        "link_km": LINK_KM,
        "target_wall_s": 10.0,
        "cases": cases,
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
