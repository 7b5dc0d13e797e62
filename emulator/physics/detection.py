"""Photon-layer frame sampler: a WCP source through fibre to two threshold detectors.

``detect_frame`` samples exactly the model of ``detectors`` (gain, error gain) slot by slot,
at a cost that grows with the number of detections, not pulses; randomness only through an
explicit ``numpy.random.Generator``. Model and derivation: docs/physics.md, "Photon layer".
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from emulator.physics.detectors import background_yield, gain
from emulator.physics.sources import signal_probability
from emulator.prf import choices_from_words, intensity_thresholds, slot_words


class FrameDetections(msgspec.Struct, frozen=True):
    """The receiver's clicks in one frame: slot index, its basis (0 = Z, 1 = X), outcome bit."""

    slot: np.ndarray  # uint64, increasing
    basis: np.ndarray  # uint8
    outcome: np.ndarray  # uint8


def detect_frame(
    rng: np.random.Generator,
    key: bytes,
    slot_start: int,
    slot_end: int,
    intensities: Sequence[float],
    probabilities: Sequence[float],
    eta: float,
    p_dc: float,
    e_det: float,
    eta_1: float | None = None,
) -> FrameDetections:
    """Sample the receiver's clicks for slots [slot_start, slot_end) of a WCP source.

    Candidates are drawn with geometric gaps at p_max = max_i Q_{mu_i}; each is kept with
    probability Q_{mu(slot)}/p_max, mu(slot) from the sender's PRF; then signal vs dark and the
    outcome are drawn conditionally on the click. Cost ~ (slot_end - slot_start) * p_max.
    ``eta`` is the total efficiency into the outcome-0 detector; ``eta_1`` (None = ``eta``)
    into the outcome-1 one: efficiency mismatch (``_detect_mismatched``).
    """
    if eta_1 is not None and eta_1 != eta:
        return _detect_mismatched(rng, key, slot_start, slot_end, intensities, probabilities,
                                  (eta, eta_1), p_dc, e_det)
    mus, thresholds, n, y0, possible = _frame_model(intensities, probabilities, slot_start,
                                                    slot_end, p_dc)
    q = gain(mus, eta, y0)
    p_max = float(q[possible].max())
    if n <= 0 or p_max <= 0.0:
        return _no_clicks()
    slots, bit, basis_a, index = _candidates(rng, key, slot_start, n, p_max, thresholds)
    if slots.size == 0:
        return _no_clicks()

    if np.any(q[possible] < p_max):  # thin to each slot's own gain; one intensity: no-op
        kept = rng.random(slots.size) * p_max < q[index]
        slots, bit, basis_a, index = slots[kept], bit[kept], basis_a[kept], index[kept]
    m = slots.size

    # conditionally on a click: signal with prob. (1 - e^{-eta mu}) / Q_mu, else dark only
    with np.errstate(invalid="ignore", divide="ignore"):
        p_signal = np.where(q > 0, signal_probability(mus, eta) / q, 0.0)
    signal = rng.random(m) < p_signal[index]
    coins = rng.integers(0, 4, m, dtype=np.uint8)
    basis_b = coins & 1  # passive 50/50 split, per gate
    coin = coins >> 1  # outcome when only dark counts clicked
    # the signal lands in the detector opposite the sender's bit with prob. w (e_det, or 1/2
    # in the other basis); given the signal detector clicked, a dark count in the other one
    # (prob. p_dc) makes a double click resolved by a fair coin, a flip with prob. d = p_dc/2:
    # the outcome is wrong with prob. w (1 - d) + (1 - w) d, drawn at once
    d = p_dc / 2.0
    wrong_p = np.where(basis_a == basis_b, e_det + d - 2 * e_det * d, 0.5)
    wrong = rng.random(m) < wrong_p
    outcome_signal = bit ^ wrong.astype(np.uint8)
    # no signal and at least one dark click: by symmetry the outcome is a fair coin
    outcome = np.where(signal, outcome_signal, coin)
    return FrameDetections(slots, basis_b, outcome)


def _detect_mismatched(
    rng: np.random.Generator,
    key: bytes,
    slot_start: int,
    slot_end: int,
    intensities: Sequence[float],
    probabilities: Sequence[float],
    etas: tuple[float, float],
    p_dc: float,
    e_det: float,
) -> FrameDetections:
    """``detect_frame`` with detector efficiencies eta_0 != eta_1: the signal's target detector
    t = bit ^ wrong is drawn first, then the click with Q_t = 1 - (1 - Y0) e^{-eta_t mu}
    (thinning from p_max at the larger efficiency), then signal vs dark as before."""
    mus, thresholds, n, y0, possible = _frame_model(intensities, probabilities, slot_start,
                                                    slot_end, p_dc)
    eta = np.asarray(etas, dtype=np.float64)
    q = gain(mus[:, None], eta[None, :], y0)  # [intensity, target detector]
    p_max = float(q[possible].max())
    if n <= 0 or p_max <= 0.0:
        return _no_clicks()
    slots, bit, basis_a, index = _candidates(rng, key, slot_start, n, p_max, thresholds)
    coins = rng.integers(0, 4, slots.size, dtype=np.uint8)
    basis_b = coins & 1
    wrong = rng.random(slots.size) < np.where(basis_a == basis_b, e_det, 0.5)
    target = bit ^ wrong.astype(np.uint8)
    kept = rng.random(slots.size) * p_max < q[index, target]
    slots, bit, index, target = slots[kept], bit[kept], index[kept], target[kept]
    basis_b, coin = basis_b[kept], coins[kept] >> 1
    m = slots.size
    s = signal_probability(mus[:, None], eta[None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        p_signal = np.where(q > 0, s / q, 0.0)
    signal = rng.random(m) < p_signal[index, target]
    flip = (rng.random(m) < p_dc / 2.0) if p_dc > 0 else np.zeros(m, dtype=bool)
    outcome = np.where(signal, target ^ flip.astype(np.uint8), coin)
    return FrameDetections(slots, basis_b, outcome)


def _frame_model(
    intensities: Sequence[float], probabilities: Sequence[float], slot_start: int,
    slot_end: int, p_dc: float,
) -> tuple[np.ndarray, np.ndarray, int, float, np.ndarray]:
    """A frame's intensities, PRF thresholds, slot count, background yield Y0, and which
    intensities can occur (only those bound the candidate rate)."""
    mus = np.asarray(intensities, dtype=np.float64)
    thresholds = intensity_thresholds(probabilities)
    if mus.shape != thresholds.shape:
        raise ValueError("intensities and probabilities must have the same length")
    possible = np.asarray(probabilities, dtype=np.float64) > 0
    return mus, thresholds, int(slot_end) - int(slot_start), float(background_yield(p_dc)), possible


def _candidates(
    rng: np.random.Generator, key: bytes, slot_start: int, n: int, p_max: float,
    thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate slots at rate ``p_max``, with the sender's bit, basis and intensity index of
    each (from its PRF)."""
    slots = candidate_offsets(rng, n, p_max).astype(np.uint64)
    slots += np.uint64(slot_start)
    return (slots, *choices_from_words(slot_words(key, slots), thresholds))


def _no_clicks() -> FrameDetections:
    return FrameDetections(np.empty(0, np.uint64), np.empty(0, np.uint8), np.empty(0, np.uint8))


def candidate_offsets(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """Offsets in [0, n) of a Bernoulli(p) process, via geometric gaps (bounded batches), drawn
    as floor(E / lambda) + 1 with E ~ Exp(1): the ziggurat is ~2x faster than rng.geometric."""
    if p >= 1.0:
        return np.arange(n, dtype=np.int64)
    expected = n * p
    scale = -1.0 / np.log1p(-p)  # 1 / lambda, (1 - p)^k = e^{-lambda k}
    parts: list[np.ndarray] = []
    position = -1  # offset of the last candidate so far
    for _ in range(64):  # each batch overshoots with prob. ~ 1e-9; 64 rounds is a safety bound
        size = int(expected + 6.0 * np.sqrt(expected) + 16)
        gaps = rng.standard_exponential(size)  # floor(E / lambda) + 1 ~ Geometric(p)
        gaps *= scale
        np.minimum(gaps, n + 1.0, out=gaps)  # a gap past the frame ends it: no int overflow
        positions = gaps.astype(np.int64)
        positions += 1
        np.cumsum(positions, out=positions)
        positions += position
        if positions[-1] >= n:
            parts.append(positions[: np.searchsorted(positions, n)])
            break
        parts.append(positions)
        position = int(positions[-1])
        expected = (n - 1 - position) * p
    else:  # pragma: no cover - statistically unreachable
        raise RuntimeError("candidate sampling did not cover the frame")
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
