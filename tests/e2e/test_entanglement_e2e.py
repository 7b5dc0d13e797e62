"""End to end through ``qnet run``: the repeater chain (decoherence in flight: a 50 ms classical
delay with T2 = 100 ms costs fidelity, as the model says), teleportation and BBM92.

Every run must exit 0 with the scenario's expectations on (an override only ever replaces an
expectation by another meaningful one). Models come from the orchestrator's merge, never from
the node under test, and the tests recompute them from the storage times the nodes reported
and the scenario's physics. Estimates are compared with models within K = 4 standard errors
of their own sample: a two-sided normal tail of 6e-5 per comparison, so the ~10 comparisons
here fail by chance about once in 10^3 runs of the file, while a model off by a few percent
(e.g. a missing dephasing term) is caught at these sample sizes.
"""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from cascade_model import leak_per_shannon_bit
from qnet_process import ROOT, alive, run_qnet

from emulator.physics import bell_diagonal as bd
from emulator.physics import memories
from emulator.physics.entropy import binary_entropy
from emulator.physics.purification import rounds
from emulator.scenario import load_scenario, memory_of
from nodes.qkd.auth import KEY_BITS_PER_MESSAGE

pytestmark = pytest.mark.e2e

SCENARIOS = ROOT / "scenarios"
K = 4  # standard errors (see the module docstring)


def run(tmp_path: Path, scenario: str, *sets: str, duration: float = 5) -> tuple[dict, object]:
    """Run ``scenario`` with overrides; exit 0 and every expectation met; no process left."""
    out = tmp_path / f"{scenario}.json"
    args = ["run", str(SCENARIOS / f"{scenario}.toml"), "--duration", str(duration),
            "--run-dir", str(tmp_path / scenario), "--json", str(out), "--no-progress"]
    for assignment in sets:
        args += ["--set", assignment]
    done = run_qnet(*args, timeout=90)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"] and all(e["ok"] for e in result["expectations"])
    assert not [p for p in result["processes"] if alive(p["pid"])], "a process outlived the run"
    return result, load_scenario(SCENARIOS / f"{scenario}.toml", list(sets))


def dephased_model(sc, f: float, storage: dict) -> list[float]:
    """Per sampled pair: the Werner fidelity ``f`` dephased by sum_i t_i / T2_i."""
    t2 = [memory_of(sc, n).t2_s for n in storage["nodes"]]
    return [memories.dephased_werner(f, sum(t / t2_i for t, t2_i in zip(row, t2) if t2_i))
            for row in storage["sample"]]


def chain(tmp_path: Path, delay_ms: float) -> tuple[dict, object]:
    """T2 = 0.1 s on purpose: F then follows the storage times (which grow with the delay,
    and with the machine's load), so the scenario's F > 0.8 floor is replaced by the run's
    own claim, 300 pairs delivered; F is judged against the model from the storage times.

    time_scale 0.25: the chain is CPU-bound (a loaded 2-core machine joined 332 pairs in 8 s
    at time_scale 1, against >= 300, and the zero-delay swap latency was 20.05 ms, against
    < 20; at 0.5 and load 9, 10.3 ms); the 50 ms delays are emulated, so the physics is the
    same."""
    sets = [f"links.{i}.classical.delay_ms={delay_ms}" for i in range(4)]
    sets += ["scenario.time_scale=0.25"]
    sets += [f"nodes.{i}.memory.t2_s=0.1" for i in range(5)]
    sets += ["apps.0.count=400",
             'expect=[{metric = "entanglement.alice-bob.pairs", ge = 300}]']
    result, sc = run(tmp_path / f"d{delay_ms:g}", "repeater-chain", *sets, duration=8)
    (entry,) = result["entanglement"]
    return entry, sc


def test_repeater_chain_decoherence_in_flight(tmp_path: Path) -> None:
    (fast, sc_fast), (slow, sc_slow) = chain(tmp_path, 0), chain(tmp_path, 50)
    for entry, sc in ((fast, sc_fast), (slow, sc_slow)):
        assert entry["path"] == ["alice", "r1", "r2", "r3", "bob"]
        assert entry["pairs"] == entry["measured_a"] >= 300  # every outcome joined
        assert entry["remote_errors"] == entry["remote_errors_a"] == 0
        assert all(b >= 50 for b in entry["samples_per_basis"].values())
        # the orchestrator's model, recomputed from the reported storage times (every pair is
        # in the sample: it is capped at 1000)
        storage = entry["storage_s"]
        assert storage["pairs"] == len(storage["sample"]) == entry["pairs"]
        assert storage["nodes"] == entry["path"]
        f_chain = bd.werner_chain(sc.link_between(u, v).entanglement.source_fidelity
                                  for u, v in pairwise(entry["path"]))
        model = float(np.mean(dephased_model(sc, f_chain, storage)))
        assert entry["fidelity_model"] == pytest.approx(model, abs=1e-12)
        assert abs(entry["fidelity_mean"] - model) < K * entry["fidelity_std"]
        # repeaters only Bell-measure: one measurement per swap
        assert [r["node"] for r in entry["repeaters"]] == ["r1", "r2", "r3"]
        assert all(r["measurements"] == r["swaps"] > 0 for r in entry["repeaters"])
        assert all(r["remote_errors"] == 0 for r in entry["repeaters"])
    # the outcome messages take 50 ms per hop: the ends' halves wait >= 100 ms for them
    assert slow["swap_latency_ms_median"] > 100
    assert fast["swap_latency_ms_median"] < 20
    # ... so each end's half is stored >= 50 ms longer (100 ms per pair); the model, which
    # sees only those storage times, drops, and the estimates follow it
    def ends_storage(entry: dict) -> float:
        return float(np.mean([row[0] + row[-1] for row in entry["storage_s"]["sample"]]))

    assert ends_storage(slow) > ends_storage(fast) + 0.1
    assert slow["fidelity_model"] < fast["fidelity_model"]
    diff_se = math.hypot(slow["fidelity_std"], fast["fidelity_std"])
    assert fast["fidelity_mean"] - slow["fidelity_mean"] > \
        (fast["fidelity_model"] - slow["fidelity_model"]) - K * diff_se


def test_teleport_fidelity_matches_werner_formula(tmp_path: Path) -> None:
    # time_scale 0.25: teleportation is CPU-bound; a loaded 2-core machine teleported 192 of
    # the 300 states in 4 s at time_scale 1, and the storage times (0.14-0.16 s against
    # T2 = 1 s) that load added put the model at 0.905, against the scenario's F > 0.9
    result, sc = run(tmp_path, "teleport", "scenario.time_scale=0.25", duration=4)
    (entry,) = result["teleport"]
    assert entry["count"] == entry["sent"] == 300
    assert entry["remote_errors"] == entry["remote_errors_a"] == 0
    f_link = sc.link_between("alice", "bob").entanglement.source_fidelity
    pair_f = dephased_model(sc, f_link, entry["storage_s"])
    f = float(np.mean([(2 * x + 1) / 3 for x in pair_f]))  # Haar average over inputs
    assert entry["fidelity_model"] == pytest.approx(f, abs=1e-12)
    # each state is a Bernoulli trial with success probability = its fidelity
    assert abs(entry["fidelity_mean"] - f) < K * math.sqrt(f * (1 - f) / entry["count"])
    assert 0 < entry["round_trip_ms_median"] < 50


def test_bbm92_chsh_qber_and_post_processed_key(tmp_path: Path) -> None:
    """CHSH and QBER as the Werner model says; authenticated post-processing runs one block to
    the same result at both ends: privacy amplification to the length
    n [1 - h(e)] - leak - verification - 2 log2(1/eps), of which the first bits repay the
    one-time keys of the block's messages (as many as both ends used) and the rest is
    delivered.

    The pair rate is bound by the CPU (the daemon's ~0.5 ms per pair), not the link: 4.3k
    pairs per wall second on a quiet 2-core machine, 450-1400 on a loaded one (6-19k sifted
    bits in the 30 s). A block's messages cost 128 bits each, 2 per batch and 2 per Cascade
    round (~40 rounds at QBER 1.3 %), ~12k bits: a block keeps key after the refill only from
    ~16k sifted bits, which a loaded machine does not reach in 30 s. So the run is chosen for
    what holds under any load: one block, formed at the end from whatever was sifted
    (block_bits 10^6, min_block_bits 2000, a third of the slowest run's), 10 s batches;
    delivered bits = max(0, PA output - refill), > 0 on a quiet machine. The scenario's
    secret_bits > 0 expectation becomes blocks_ok >= 1 (docs/decisions.md 28)."""
    result, sc = run(tmp_path, "bbm92", "scenario.time_scale=0.5", "apps.0.block_bits=1000000",
                     "apps.0.min_block_bits=2000", "apps.0.sift_interval_s=10",
                     'expect=[{metric = "entanglement.bbm92/alice-bob.chsh", gt = 2.0}, '
                     '{metric = "entanglement.bbm92/alice-bob.blocks_ok", ge = 1}]',
                     duration=15)
    (entry,) = result["entanglement"]
    f0 = sc.link_between("alice", "bob").entanglement.source_fidelity  # no memory decay
    e = (4 * f0 - 1) / 3
    assert abs(entry["chsh"] - 2 * math.sqrt(2) * e) < K * entry["chsh_std"]
    q = (1 - e) / 2
    assert abs(entry["qber"] - q) < K * math.sqrt(q * (1 - q) / entry["qber_samples"])
    assert entry["blocks_ok"] == len(entry["block_qber"]) == 1
    assert entry["blocks_failed"] == entry["blocks_aborted"] == entry["auth_rejected"] == 0
    assert entry["remote_errors"] == entry["remote_errors_a"] == 0
    assert entry["secret_bits_a"] == entry["secret_bits"]
    assert entry["key_sha256_a"] == entry["key_sha256_b"]
    # the block's length: BBM92 at its own sampled QBER
    n = entry["reconciled_bits"]
    assert n >= 2000
    overhead = 122 + 2 * math.log2(1e10)  # verification tag + PA security
    expected = n * (1 - float(binary_entropy(entry["block_qber"][0]))) \
        - entry["ec_leaked_bits"] - overhead
    assert abs(entry["pa_output_bits"] - expected) <= 1
    # the refill: 128 bits for each message the block took; the one-time keys both ends used
    # (sent + received) are exactly those and b's Done (no rejects, so no NACK or resend)
    (batches,), (rounds,) = entry["block_batches"], entry["block_cascade_rounds"]
    messages = 2 * batches + 2 * rounds + 5  # + block start, Cascade done, verify x2, PA seed
    used = KEY_BITS_PER_MESSAGE * (messages + 1)
    assert entry["auth_key_bits_used_a"] == entry["auth_key_bits_used_b"] == used
    assert entry["auth_key_bits"] == min(entry["pa_output_bits"], KEY_BITS_PER_MESSAGE * messages)
    assert entry["secret_bits"] == entry["pa_output_bits"] - entry["auth_key_bits"]
    # Cascade's leakage against the model QBER, as our Cascade leaks on simulated blocks of
    # the same size and sample (K sd of one block + K of the simulation's mean)
    mean, sd = leak_per_shannon_bit(n, q, max(entry["qber_samples"], 100), "original",
                                    blocks=12)
    f_model = entry["ec_leaked_bits"] / (n * float(binary_entropy(q)))
    assert abs(f_model - mean) < K * sd + K * sd / math.sqrt(12)


def test_repeater_chain_with_dejmps_purification(tmp_path: Path) -> None:
    """One DEJMPS round on the end-to-end Werner pairs (no memory decay): fidelity and the
    success rate as the recurrence bookkeeping says."""
    f_link = 0.95
    sets = [f"links.{i}.entanglement.source_fidelity={f_link}" for i in range(4)]
    sets += [f"nodes.{i}.memory.t2_s=1e6" for i in range(5)]
    sets += ["apps.0.count=300", "apps.0.purification=dejmps", "apps.0.purification_rounds=1"]
    # time_scale 0.25 for 8 s: a quiet 2-core machine of today's CI kind joined only 101-114
    # pairs in 6 s wall at time_scale 1, a loaded one 122 in 6 s at 0.5 and 168 at 0.25 (the
    # chain is CPU-bound, not link-bound; the physics is the same)
    sets += ["scenario.time_scale=0.25"]
    result, _ = run(tmp_path, "repeater-chain", *sets, duration=8)  # the scenario's F > 0.8
    (entry,) = result["entanglement"]
    f_chain = bd.werner_chain([f_link] * 4)
    (p_ok,), coeffs = rounds("dejmps", bd.werner_coefficients(f_chain), 1)
    assert entry["fidelity_model"] == pytest.approx(coeffs[0])
    # every pair a measured is joined at b (count 300, or fewer if the 8 s ran out); >= 100
    # keeps the kept share's SE at <= 0.04 (p_ok ~ 0.8; 207 of 257 kept in a quiet run)
    assert entry["pairs"] == entry["measured_a"] >= 100 and entry["remote_errors"] == 0
    assert abs(entry["fidelity_mean"] - coeffs[0]) < K * entry["fidelity_std"]
    n = entry["purification_attempted"]
    assert abs(entry["purification_kept"] / n - p_ok) < K * math.sqrt(p_ok * (1 - p_ok) / n)
