"""Decoy BB84 post-processing cores, wired together in memory on photon-layer detections.

The detections come from the daemon's own sampler (``detect_frame``) with the sender's PRF, so
the whole chain sifting -> estimation -> Cascade -> verification -> Toeplitz runs on the same
statistics a real run has, without processes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics import decoy
from emulator.physics.channels import transmittance
from emulator.physics.detection import detect_frame
from emulator.physics.detectors import gain, qber
from emulator.physics.entropy import binary_entropy
from nodes.qkd.postprocessing import (
    PostprocessingConfig,
    ReceiverPostprocessing,
    SenderPostprocessing,
)
from nodes.qkd.sifting import SiftReceiver, SiftSender

MUS = (0.5, 0.1, 0.0)
PROBS = (0.8, 0.1, 0.1)
EFFICIENCY, P_DC, E_DET = 0.1, 1e-6, 0.015
SAMPLE = 0.1


def run_link(length_km: float, pulses: int, *, block_bits: int = 100_000, seed: int = 1,
             tamper_block: int | None = None, frame: int = 10_000_000,
             finite_key: bool = False):
    """Sift and post-process ``pulses`` slots; returns (sender core, receiver core)."""
    rng = np.random.default_rng(seed)
    key = rng.bytes(16)
    eta = transmittance(length_km, 0.2) * EFFICIENCY
    config = PostprocessingConfig(MUS, PROBS, block_bits=block_bits, min_block_bits=block_bits,
                                  finite_key=finite_key)
    sift_tx = SiftSender(key, list(PROBS), SAMPLE, np.random.default_rng(seed + 1),
                         key_rule=config.key_rule)
    sift_rx = SiftReceiver(len(MUS), key_rule=config.key_rule)
    tx = SenderPostprocessing(config, np.random.default_rng(seed + 2))
    rx = ReceiverPostprocessing(config, np.random.default_rng(seed + 3))

    def exchange(to_sender: list) -> None:
        """Deliver messages back and forth until both cores are quiet."""
        for _ in range(100_000):
            if not to_sender:
                return
            to_receiver = []
            for message in to_sender:
                to_receiver += tx.on_message(message)
            to_sender = []
            for message in to_receiver:
                if tamper_block is not None and type(message).__name__ == "VerifyTag" \
                        and message.block_id == tamper_block:
                    rx._block.key[0] ^= 1  # a residual error Cascade missed
                to_sender += rx.on_message(message)
        raise AssertionError("exchange did not settle")

    for start in range(0, pulses, frame):
        clicks = detect_frame(rng, key, start, min(pulses, start + frame), MUS, PROBS, eta,
                              P_DC, E_DET)
        sift_rx.add_detections(clicks.slot.astype("<u8").tobytes(), clicks.basis.tobytes(),
                               clicks.outcome.tobytes(), frame_end=min(pulses, start + frame))
        request = sift_rx.next_request()
        result, record_rx = sift_rx.on_sift_reply(sift_tx.on_sift_request(request))
        tx.add_record(sift_tx.on_sample_result(result))
        exchange(rx.add_record(record_rx))
    exchange(rx.finish())
    assert rx.idle
    return tx, rx, eta


def delivered(core) -> np.ndarray:
    keys = [b.final_key for b in core.blocks if b.status == "ok"]
    return np.concatenate(keys) if keys else np.zeros(0, np.uint8)


@pytest.mark.parametrize("length_km,pulses", [(10, 100_000_000), (25, 150_000_000),
                                              (50, 400_000_000)])
def test_secret_bits_per_pulse_match_gllp_with_measured_f(length_km: float, pulses: int) -> None:
    tx, rx, eta = run_link(length_km, pulses)
    ok = [b for b in rx.blocks if b.status == "ok"]
    assert len(ok) >= 2 and all(b.status == "ok" for b in tx.blocks)
    assert np.array_equal(delivered(tx), delivered(rx))  # identical final keys
    assert [b.final_key.tobytes() for b in ok] == \
        [b.final_key.tobytes() for b in tx.blocks if b.status == "ok"]
    # measured reconciliation efficiency over the processed blocks
    n = sum(b.n for b in ok)
    e_mu = np.mean([b.estimate.e_mu for b in ok])
    f = sum(b.leaked_bits for b in ok) / (n * binary_entropy(e_mu))
    assert 1.0 < f < 1.25
    # secret bits (PA output, before the auth refill) per pulse of the processed slots
    slots = ok[-1].slot_end - ok[0].slot_start
    measured = sum(b.out_len for b in ok) / slots
    # GLLP from the channel model: q = signal share x basis sifting x kept after the sample
    q = PROBS[0] * 0.5 * (1 - SAMPLE)
    y0 = 1 - (1 - P_DC) ** 2
    theory = float(decoy.gllp_rate(MUS[0], MUS[1], eta, y0, E_DET, f=f, q=q))
    assert theory > 0
    # each block's length rests on its own binomial counts: within K = 4 delta-method
    # standard errors of the mean over the blocks (a 6e-5 two-sided tail), once the fixed
    # per-block cost (verification tag, 2 log2(1/eps_pa), the floor) is taken off the rate
    sd = block_rate_sd(slots / len(ok), eta, y0, f, q) / math.sqrt(len(ok))
    overhead = len(ok) * (122 + 2 * math.log2(1e10) + 0.5) / slots
    assert abs(measured - (theory - overhead)) < 4 * sd


def block_rate_sd(slots: float, eta: float, y0: float, f: float, q: float) -> float:
    """Standard deviation of one block's GLLP bits per pulse from the counts its decoy
    estimate uses (delta method, central differences): detections per intensity (binomial
    over the block's slots), the signal QBER from its sample and the decoy QBER from its
    matched decoy slots, each at its model value."""
    sent = [slots * p for p in PROBS]
    gains = [float(gain(mu, eta, y0)) for mu in MUS]
    e_mu, e_nu = (float(qber(mu, eta, y0, E_DET)) for mu in MUS[:2])
    x0 = np.array([s * g for s, g in zip(sent, gains)] + [e_mu, e_nu])
    n_sample = sent[0] * gains[0] * 0.5 * SAMPLE
    n_decoy = sent[1] * gains[1] * 0.5
    sds = np.sqrt([s * g * (1 - g) for s, g in zip(sent, gains)]
                  + [e_mu * (1 - e_mu) / n_sample, e_nu * (1 - e_nu) / n_decoy])

    def rate(x: np.ndarray) -> float:
        det = tuple(float(v) for v in x[:3])
        est = decoy.estimate(MUS[0], MUS[1], tuple(sent), det,
                             (x[3] * det[0], x[4] * det[1], 0.5 * det[2]))
        return float(decoy.gllp_key_rate(est.q_mu, est.e_mu, est.q1, est.e1_upper, f, q))

    grad = []
    for i, sd in enumerate(sds):
        step = np.zeros(5)
        step[i] = sd / 10
        grad.append((rate(x0 + step) - rate(x0 - step)) / (2 * step[i]))
    return float(np.sqrt(np.sum((np.array(grad) * sds) ** 2)))


def test_failed_verification_discards_the_block_at_both_ends() -> None:
    tx, rx, _ = run_link(25, 100_000_000, tamper_block=1)
    status_rx = [b.status for b in rx.blocks]
    status_tx = [b.status for b in tx.blocks]
    assert status_rx[1] == status_tx[1] == "failed_verification"
    assert rx.blocks[1].final_key is None and tx.blocks[1].final_key is None
    assert status_rx.count("ok") >= 1 and status_rx == status_tx
    assert rx.verifier.blocks_failed == tx.verifier.blocks_failed == 1
    assert np.array_equal(delivered(tx), delivered(rx))


def test_high_qber_aborts_without_key() -> None:
    global E_DET
    saved, E_DET = E_DET, 0.15
    try:
        tx, rx, _ = run_link(10, 50_000_000)
    finally:
        E_DET = saved
    assert rx.blocks and all(b.status == "aborted" for b in rx.blocks)
    assert [b.status for b in tx.blocks] == [b.status for b in rx.blocks]
    assert len(delivered(rx)) == 0


def test_auth_refill_comes_first_and_is_identical() -> None:
    tx, rx, _ = run_link(10, 60_000_000)
    for a, b in zip(tx.blocks, rx.blocks):
        assert a.auth_material == b.auth_material and len(a.auth_material) > 0
        assert a.auth_bits == b.auth_bits == min(a.out_len, a.auth_bits)
        assert len(a.final_key) == a.out_len - a.auth_bits
        assert math.isclose(len(a.auth_material) * 8, a.auth_bits, abs_tol=7)


def test_finite_key_mode_gives_matching_keys_below_the_asymptotic_rate() -> None:
    """Lim14 lengths: positive for large blocks, below GLLP, closer to it as blocks grow."""
    eta = transmittance(25, 0.2) * EFFICIENCY
    y0 = 1 - (1 - P_DC) ** 2
    ratios = []
    for block_bits in (1_000_000, 2_500_000):
        tx, rx, _ = run_link(25, 800_000_000, block_bits=block_bits, finite_key=True)
        ok = [b for b in rx.blocks if b.status == "ok"]
        assert ok and np.array_equal(delivered(tx), delivered(rx))
        assert all(b.finite is not None and 0 < b.finite.phi < 0.5 and b.out_len > 0
                   for b in ok)
        n = sum(b.n for b in ok)
        f = sum(b.leaked_bits for b in ok) / (n * binary_entropy(
            np.mean([b.estimate.e_mu for b in ok])))
        slots = ok[-1].slot_end - ok[0].slot_start
        measured = sum(b.out_len for b in ok) / slots
        # asymptotic reference for the same key rule: every Z-basis bit of every intensity
        q = 0.5 * 0.5  # sender Z x receiver Z
        asymptotic = float(decoy.gllp_rate(MUS[0], MUS[1], eta, y0, E_DET, f=f, q=q))
        assert 0 < measured < asymptotic * 1.2  # key from decoy slots too, so not below q=1/4
        ratios.append(measured / asymptotic)
    assert ratios[1] > ratios[0]  # finite-size penalty shrinks with the block


def test_entanglement_based_model_uses_the_bbm92_length() -> None:
    """Records with one 'intensity' and a QBER sample, as a BBM92 app builds them."""
    from nodes.qkd.sifting import BatchRecord

    rng = np.random.default_rng(7)
    config = PostprocessingConfig((1.0,), (1.0,), block_bits=50_000, min_block_bits=50_000,
                                  entangled=True)
    tx = SenderPostprocessing(config, np.random.default_rng(1))
    rx = ReceiverPostprocessing(config, np.random.default_rng(2))
    qber, out = 0.03, []
    for batch in range(6):
        alice = rng.integers(0, 2, 20_000, dtype=np.uint8)
        bob = alice ^ (rng.random(20_000) < qber).astype(np.uint8)
        sample = rng.random(20_000) < 0.1
        errors = int(np.count_nonzero(alice[sample] != bob[sample]))

        def record(key: np.ndarray) -> BatchRecord:
            return BatchRecord(batch, (batch + 1) * 20_000, np.array([20_000]),
                               np.array([20_000]), np.array([errors]), int(sample.sum()),
                               key[~sample], complete=True)

        tx.add_record(record(alice))
        out += rx.add_record(record(bob))
        while out:
            replies = [r for message in out for r in tx.on_message(message)]
            out = [r for message in replies for r in rx.on_message(message)]
    ok = [b for b in rx.blocks if b.status == "ok"]
    assert len(ok) == 2 and all(b.status == "ok" for b in tx.blocks)
    assert np.array_equal(delivered(tx), delivered(rx))
    for block in ok:
        e = block.estimate.e_mu
        expected = block.n * (1 - binary_entropy(e)) - block.leaked_bits - 122 - \
            2 * math.log2(1e10)
        assert abs(block.out_len - expected) <= 1
