"""Photon-layer sampler: its gain and QBER match ``detectors`` within 4 binomial sigma."""

from __future__ import annotations

import numpy as np
import pytest

from emulator.physics.channels import transmittance
from emulator.physics.detection import detect_frame
from emulator.physics.detectors import background_yield, error_gain, error_gain_exact, gain
from emulator.prf import sender_choices

KEY = b"test-link-key"
ETA_DET = 0.1
ALPHA = 0.2


def sigma(p: float, n: int) -> float:
    return float(np.sqrt(p * (1.0 - p) / n))


def run_frames(rng, n_pulses, frame, intensities, probabilities, eta, p_dc, e_det):
    """Detections over [0, n_pulses) in frames, as the daemon calls it."""
    parts = [
        detect_frame(rng, KEY, s, min(s + frame, n_pulses), intensities, probabilities,
                     eta, p_dc, e_det)
        for s in range(0, n_pulses, frame)
    ]
    return (np.concatenate([d.slot for d in parts]), np.concatenate([d.basis for d in parts]),
            np.concatenate([d.outcome for d in parts]))


def pulses_at_intensity(i, n_pulses, probabilities, chunk=1_000_000):
    """Pulses the sender sent at intensity ``i``, from its PRF (chunked: bounded memory)."""
    return sum(
        int(np.count_nonzero(
            sender_choices(KEY, np.arange(s, min(s + chunk, n_pulses), dtype=np.uint64),
                           probabilities)[2] == i))
        for s in range(0, n_pulses, chunk)
    )


def sifted_qber(slots, basis, outcome, probabilities):
    bit, basis_a, index = sender_choices(KEY, slots, probabilities)
    sifted = basis_a == basis
    return sifted, outcome != bit, index


@pytest.mark.parametrize("length_km,n_pulses", [(25.0, 10_000_000), (50.0, 20_000_000)])
def test_gain_and_qber_match_closed_forms(length_km, n_pulses):
    mu, p_dc, e_det = 0.5, 1e-6, 0.015
    eta = float(transmittance(length_km, ALPHA)) * ETA_DET
    rng = np.random.default_rng(11)
    slots, basis, outcome = run_frames(rng, n_pulses, 1_000_000, [mu], [1.0], eta, p_dc, e_det)
    assert np.all(np.diff(slots.astype(np.int64)) > 0) and slots[-1] < n_pulses

    q = float(gain(mu, eta, background_yield(p_dc)))
    assert abs(slots.size / n_pulses - q) <= 4 * sigma(q, n_pulses)

    sifted, wrong, _ = sifted_qber(slots, basis, outcome, [1.0])
    n_sifted = int(sifted.sum())
    assert abs(n_sifted - slots.size / 2) <= 4 * np.sqrt(slots.size / 4)
    e = float(error_gain_exact(mu, eta, p_dc, e_det)) / q
    assert abs(wrong[sifted].mean() - e) <= 4 * sigma(e, n_sifted)
    # the acceptance formula differs from the exact one by O(p_dc): invisible at this size
    e_approx = float(error_gain(mu, eta, background_yield(p_dc), e_det)) / q
    assert abs(wrong[sifted].mean() - e_approx) <= 4 * sigma(e_approx, n_sifted)
    # unsifted slots: the outcome is independent of the sender's bit
    n_other = int((~sifted).sum())
    assert abs(wrong[~sifted].mean() - 0.5) <= 4 * sigma(0.5, n_other)


def test_each_decoy_intensity_matches_its_own_gain():
    intensities, probabilities = [0.5, 0.1, 0.0], [0.6, 0.3, 0.1]
    p_dc, e_det, n_pulses = 1e-4, 0.02, 10_000_000
    eta = float(transmittance(25.0, ALPHA)) * ETA_DET
    rng = np.random.default_rng(5)
    slots, basis, outcome = run_frames(rng, n_pulses, 2_000_000, intensities, probabilities,
                                       eta, p_dc, e_det)
    sifted, wrong, index = sifted_qber(slots, basis, outcome, probabilities)
    y0 = float(background_yield(p_dc))
    for i, mu in enumerate(intensities):
        # pulses sent at intensity i, from the sender's PRF (chunked: bounded memory)
        sent = pulses_at_intensity(i, n_pulses, probabilities)
        q = float(gain(mu, eta, y0))
        clicks = int(np.count_nonzero(index == i))
        assert abs(clicks / sent - q) <= 4 * sigma(q, sent), (mu, clicks / sent, q)
        mine = sifted & (index == i)
        e = float(error_gain_exact(mu, eta, p_dc, e_det)) / q
        assert abs(wrong[mine].mean() - e) <= 4 * sigma(e, int(mine.sum())), (mu, e)


def test_vacuum_gives_background_yield_and_random_outcomes():
    p_dc, n_pulses = 1e-3, 10_000_000
    rng = np.random.default_rng(7)
    slots, basis, outcome = run_frames(rng, n_pulses, 5_000_000, [0.0], [1.0], 0.01, p_dc, 0.0)
    y0 = float(background_yield(p_dc))
    assert abs(slots.size / n_pulses - y0) <= 4 * sigma(y0, n_pulses)
    sifted, wrong, _ = sifted_qber(slots, basis, outcome, [1.0])
    assert abs(wrong[sifted].mean() - 0.5) <= 4 * sigma(0.5, int(sifted.sum()))


def test_sampler_follows_exact_model_where_approximation_is_off():
    """Strong noise (p_dc = 0.1, eta = 1): the exact expression and the approximation are
    ~20 sigma apart here, and the sampler matches the exact one."""
    mu, eta, p_dc, e_det, n_pulses = 0.5, 1.0, 0.1, 0.015, 400_000
    rng = np.random.default_rng(3)
    slots, basis, outcome = run_frames(rng, n_pulses, n_pulses, [mu], [1.0], eta, p_dc, e_det)
    sifted, wrong, _ = sifted_qber(slots, basis, outcome, [1.0])
    # E Q is errors per pulse with equal bases; the receiver's basis is a fair coin per gate
    # independent of the click, so sifted errors ~ Binomial(pulses, E Q / 2)
    errors = int((sifted & wrong).sum())
    exact = float(error_gain_exact(mu, eta, p_dc, e_det))
    approx = float(error_gain(mu, eta, background_yield(p_dc), e_det))
    s = sigma(exact / 2, n_pulses)
    assert abs(errors / n_pulses - exact / 2) <= 4 * s
    assert abs(approx - exact) / 2 > 8 * s


def test_cost_follows_detections_not_pulses():
    """1e15 slots (8 PB if anything were allocated per pulse) with ~200 expected clicks."""
    n, p_dc = 10**15, 1e-13
    rng = np.random.default_rng(1)
    d = detect_frame(rng, KEY, 5 * n, 6 * n, [0.5], [1.0], 0.0, p_dc, 0.0)
    expected = n * float(background_yield(p_dc))
    assert abs(d.slot.size - expected) <= 4 * np.sqrt(expected)
    assert np.all(d.slot >= np.uint64(5 * n)) and np.all(d.slot < np.uint64(6 * n))
    assert np.all(np.diff(d.slot.astype(np.int64)) > 0)


def test_reproducible_and_empty_cases():
    args = (b"k", 0, 1_000_000, [0.5, 0.1], [0.5, 0.5], 0.01, 1e-6, 0.01)
    a = detect_frame(np.random.default_rng(9), *args)
    b = detect_frame(np.random.default_rng(9), *args)
    np.testing.assert_array_equal(a.slot, b.slot)
    np.testing.assert_array_equal(a.outcome, b.outcome)
    assert detect_frame(np.random.default_rng(9), b"k", 10, 10, [0.5], [1.0], 0.1, 0.0, 0.0
                        ).slot.size == 0
    assert detect_frame(np.random.default_rng(9), b"k", 0, 10**6, [0.5], [1.0], 0.0, 0.0, 0.0
                        ).slot.size == 0
    with pytest.raises(ValueError):
        detect_frame(np.random.default_rng(9), b"k", 0, 10, [0.5, 0.1], [1.0], 0.1, 0.0, 0.0)
