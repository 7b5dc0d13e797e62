"""Real-detector effects on a click list: non-paralysable dead time, afterpulsing, gating.

``apply_effects`` turns the ideal clicks of ``detection.detect_frame`` into what two gated or
free-running detectors report, frame by frame, with the state that crosses frames in
``DetectorMemory``. Cost follows detections: numpy over sorted clicks, a short loop only over
chains of clicks closer than the dead time and over afterpulse cascades. Model and formulas:
docs/physics.md, "Detector effects".

Sources: non-paralysable dead time, counted rate R = r / (1 + r tau): G. F. Knoll, "Radiation
Detection and Measurement", 4th ed. (2010), sec. 4.VII. Afterpulsing from trapped carriers
released with an exponential delay, counted only in an open gate after the dead time:
S. Cova, A. Lacaita & G. Ripamonti, IEEE Electron Device Lett. 12, 685 (1991). Dark counts per
gate 1 - exp(-R_dc w): Poisson arrivals in a gate of width w.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from emulator.physics.detection import FrameDetections, candidate_offsets

DETECTOR_SHIFT = 62  # key = slot + detector << 62: one sorted array, chains never cross detectors
NEVER = -(1 << 60)  # "last click" of a detector that has not clicked


class DetectorEffects(msgspec.Struct, frozen=True):
    """Effects in slot units: blind slots after a click, trap probability per avalanche, mean
    release delay (slots), and the open fraction of each slot period (1 = free-running)."""

    dead_slots: int = 0
    afterpulse_probability: float = 0.0
    decay_slots: float = 1.0
    gate_fraction: float = 1.0

    @property
    def active(self) -> bool:
        return self.dead_slots > 0 or self.afterpulse_probability > 0


class DetectorMemory(msgspec.Struct):
    """What crosses a frame boundary: each detector's last counted slot and the afterpulses
    already released into later slots (slot, detector)."""

    last: list[int] = msgspec.field(default_factory=lambda: [NEVER, NEVER])
    pending_slot: np.ndarray = msgspec.field(default_factory=lambda: np.empty(0, np.int64))
    pending_det: np.ndarray = msgspec.field(default_factory=lambda: np.empty(0, np.uint8))


class EffectCounts(msgspec.Struct):
    """Per frame: ideal clicks lost to dead time, and afterpulses counted."""

    blocked: int = 0
    afterpulses: int = 0


def effects_of(rate_hz: float, dead_time_ns: float, afterpulse_probability: float,
               afterpulse_decay_ns: float, gate_width_ns: float | None) -> DetectorEffects:
    """Scenario units to slot units; the dead time is rounded to whole slots (tau = D / f)."""
    period_ns = 1e9 / rate_hz
    gate = 1.0 if gate_width_ns is None else min(1.0, gate_width_ns / period_ns)
    return DetectorEffects(round(dead_time_ns / period_ns), afterpulse_probability,
                           afterpulse_decay_ns / period_ns, gate)


def link_effects(quantum) -> DetectorEffects:
    """The effects of a scenario's ``[links.quantum]`` (its source rate and detector keys)."""
    d = quantum.detector
    return effects_of(quantum.source.rate_hz, d.dead_time_ns, d.afterpulse_probability,
                      d.afterpulse_decay_ns, d.gate_width_ns)


def gate_dark_count_probability(dark_count_rate_hz: float, window_s: float) -> float:
    """p_dc = 1 - exp(-R_dc w): at least one thermal/dark event in a gate of width w."""
    return -math.expm1(-dark_count_rate_hz * window_s)


def counted_rate(r, tau):
    """Non-paralysable dead time: R = r / (1 + r tau) (Knoll sec. 4.VII); slotted, exact with
    r = p per slot and tau = D slots for Bernoulli(p) clicks."""
    r = np.asarray(r, dtype=np.float64)
    return r / (1.0 + r * tau)


def afterpulse_yield(e: DetectorEffects) -> float:
    """P_ap: probability that a counted click is followed by a counted afterpulse, ignoring other
    clicks: sum over gates k > D of p_trap e^{-k/tau} (1 - e^{-g/tau}), g = gate fraction."""
    if e.afterpulse_probability <= 0:
        return 0.0
    a = 1.0 / e.decay_slots
    return float(e.afterpulse_probability * math.exp(-(e.dead_slots + 1) * a)
                 * -math.expm1(-e.gate_fraction * a) / -math.expm1(-a))


def qber_with_afterpulses(e_true, p_ap):
    """QBER of counted clicks when a share P_ap of them are afterpulses, each an error with
    probability 1/2 (uncorrelated with the bit of its slot): e' = (1 - P_ap) e + P_ap / 2.
    A cascade gives N_p (1 + P + P^2 + ...) clicks, so the afterpulse share is exactly P_ap."""
    return (1.0 - p_ap) * np.asarray(e_true, dtype=np.float64) + 0.5 * p_ap


def non_paralysable(keys: np.ndarray, dead: int) -> np.ndarray:
    """Mask of counted clicks among sorted ``keys``: a counted click at s blinds (s, s + dead]
    and a click in the same slot. The first of a run closer than ``dead`` is counted, the
    second never; the loop walks only runs of three or more, all at once."""
    n = keys.size
    start = np.ones(n + 1, dtype=bool)  # start[n]: a sentinel past the end
    start[1:n] = np.diff(keys) > dead
    counted = start[:n].copy()
    frontier = np.flatnonzero(start[:-2] & ~start[1:-1] & ~start[2:])
    for _ in range(n):
        if frontier.size == 0:
            break
        nxt = np.searchsorted(keys, keys[frontier] + dead, side="right")
        frontier = nxt[~start[nxt]]
        counted[frontier] = True
    return counted


def apply_effects(rng: np.random.Generator, found: FrameDetections, slot_end: int,
                  effects: DetectorEffects, memory: DetectorMemory
                  ) -> tuple[FrameDetections, EffectCounts]:
    """Counted clicks of a frame ending at ``slot_end``; updates ``memory`` for the next frame.

    A click's detector is its outcome (a double click already resolved by the sampler counts in
    one detector: O(p_dc)). Each counted avalanche traps a carrier with the trap probability,
    released after Exp(decay) slots and counted as an afterpulse in its own detector if it falls
    in an open gate after the dead time; an afterpulse's basis is the receiver's coin and its
    outcome its detector, so it is uncorrelated with the sender's bit. Every potential
    afterpulse (of any click, recursively) is drawn first and merged once into the clicks,
    sorted by (detector, slot). One chain walk takes every potential click as present; rounds
    then settle only the clusters (runs closer than the dead time) holding an afterpulse.
    """
    if not effects.active and memory.pending_slot.size == 0:
        return found, EffectCounts()
    n_primary = found.slot.size
    slots, dets, parents = _potential_events(rng, found, slot_end, effects, memory)
    first = n_primary + memory.pending_slot.size  # potential afterpulses from here on
    keys = slots + (dets.astype(np.int64) << DETECTOR_SHIFT)
    order = _key_order(keys, found.outcome, n_primary)
    size = keys.size
    rank = np.empty(size, dtype=np.int64)
    rank[order] = np.arange(size)
    keys = keys[order]
    child, parent = rank[first:], rank[parents]  # sorted positions of afterpulses, parents
    dead = effects.dead_slots
    # live: slot_end > slot > last + dead of its detector (else blinded by a past frame)
    b0, b1, b2, b3 = (int(np.searchsorted(keys, (d << DETECTOR_SHIFT) + b))
                      for d in (0, 1) for b in (memory.last[d] + dead + 1, slot_end))
    counted = np.zeros(size, dtype=bool)
    walked = non_paralysable(np.concatenate((keys[b0:b1], keys[b2:b3])), dead)
    counted[b0:b1], counted[b2:b3] = walked[:b1 - b0], walked[b1 - b0:]  # all present
    if child.size:
        start = np.ones(size, dtype=bool)
        start[1:] = np.diff(keys) > dead
        cluster = np.cumsum(start)
        hard = np.zeros(int(cluster[-1]) + 1, dtype=bool)
        hard[cluster[child]] = True
        u = np.flatnonzero(hard[cluster])
        parent_at = np.full(size, -1, dtype=np.int64)
        parent_at[child] = parent
        live = ((u >= b0) & (u < b1)) | ((u >= b2) & (u < b3))
        _settle(counted, u, keys[u], live, parent_at[u], dead)

    s_slot = keys & ((1 << DETECTOR_SHIFT) - 1)
    later = s_slot >= slot_end  # carried to the next frame: pending ones, afterpulses alive
    later[child] &= counted[parent]
    carry = np.flatnonzero(later)
    memory.pending_slot = s_slot[carry]
    memory.pending_det = (keys[carry] >> DETECTOR_SHIFT).astype(np.uint8)
    cidx = np.flatnonzero(counted)
    n0 = int(np.searchsorted(cidx, b2))  # counted clicks of detector 0
    if n0:
        memory.last[0] = int(s_slot[cidx[n0 - 1]])
    if n0 < cidx.size:
        memory.last[1] = int(s_slot[cidx[-1]])
    source = order[cidx]
    is_primary = source < n_primary
    prim = np.flatnonzero(is_primary)
    basis = rng.integers(0, 2, cidx.size, dtype=np.uint8)  # an afterpulse's: the coin
    basis[prim] = found.basis[source[prim]]
    counts = EffectCounts(blocked=n_primary - prim.size, afterpulses=cidx.size - prim.size)
    return _records(rng, s_slot[cidx], n0, basis, is_primary), counts


def _potential_events(rng: np.random.Generator, found: FrameDetections, slot_end: int,
                      effects: DetectorEffects, memory: DetectorMemory
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slot, detector) of the frame's clicks, the pending afterpulses, then each generation of
    potential afterpulses of those before ``slot_end``; and each afterpulse's parent index."""
    slot = [found.slot.astype(np.int64), memory.pending_slot]
    det = [found.outcome, memory.pending_det]
    parent: list[np.ndarray] = []
    g_slot, g_det = np.concatenate(slot), np.concatenate(det)
    size = g_slot.size
    g_index = np.flatnonzero(g_slot < slot_end)
    if g_index.size < size:
        g_slot, g_det = g_slot[g_index], g_det[g_index]
    for _ in range(64):  # generations of potential afterpulses; each ~P_ap times the last
        which, delay = _afterpulses(rng, g_slot.size, effects)
        if which.size == 0:
            break
        c_slot, c_det = g_slot[which] + delay, g_det[which]
        slot.append(c_slot)
        det.append(c_det)
        parent.append(g_index[which])
        before = np.flatnonzero(c_slot < slot_end)
        g_index = size + before
        g_slot, g_det = c_slot[before], c_det[before]
        size += which.size
    parents = np.concatenate(parent) if parent else np.empty(0, np.int64)
    return np.concatenate(slot), np.concatenate(det), parents


def _key_order(keys: np.ndarray, outcome: np.ndarray, n_primary: int) -> np.ndarray:
    """Stable argsort of ``keys`` whose first ``n_primary`` are the frame's clicks (increasing
    slot): split by detector first, so the sort sees a few sorted runs."""
    runs = np.concatenate((np.flatnonzero(outcome == 0), np.flatnonzero(outcome != 0),
                           np.arange(n_primary, keys.size)))
    return runs[np.argsort(keys[runs], kind="stable")]


def _settle(counted: np.ndarray, u: np.ndarray, keys: np.ndarray, live: np.ndarray,
            parent: np.ndarray, dead: int) -> None:
    """Counted among the events ``u`` (sorted keys; parent: sorted index or -1): present if
    ``live`` and (no parent or parent counted), counted if present and not blinded. Iterates
    from ``counted[u]`` to the fixed point; each round settles at least the earliest
    disagreement, since a click depends only on earlier ones."""
    child = np.flatnonzero(parent >= 0)
    orphan = live & (parent < 0)
    now = counted[u]
    for _ in range(u.size + 1):
        present = orphan.copy()
        present[child] = live[child] & counted[parent[child]]
        idx = np.flatnonzero(present)
        new = np.zeros(u.size, dtype=bool)
        new[idx[non_paralysable(keys[idx], dead)]] = True
        if np.array_equal(new, now):
            return
        now = new
        counted[u] = new
    raise RuntimeError("detector effects did not settle")  # pragma: no cover


def _afterpulses(rng: np.random.Generator, m: int, e: DetectorEffects
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Which of ``m`` avalanches give an afterpulse, and its delay in slots. A trap released
    at x ~ Exp(decay) counts iff floor(x) = k > D and x - k < gate fraction: each avalanche
    with P_ap (``afterpulse_yield``), and then k - D ~ Geometric(1 - e^{-1/decay})."""
    p_ap = afterpulse_yield(e)
    if p_ap <= 0 or m == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    which = candidate_offsets(rng, m, p_ap)
    delay = e.dead_slots + rng.geometric(-math.expm1(-1.0 / e.decay_slots), which.size)
    return which, delay


def _records(rng: np.random.Generator, slot: np.ndarray, n0: int, basis: np.ndarray,
             is_primary: np.ndarray) -> FrameDetections:
    """One record per slot from counted clicks (detector 0's ``n0`` first, each by slot); both
    detectors in one slot is a double click: a fair coin, the basis the ideal click's if one of
    the two is."""
    m = slot.size
    order = np.argsort(slot, kind="stable")  # two sorted runs; ties: detector 0 first
    s, b, prim = slot[order], basis[order], is_primary[order]
    outcome = (order >= n0).astype(np.uint8)
    second = np.flatnonzero(s[1:] == s[:-1]) + 1  # detector 1's click of a double
    if second.size:
        b[second - 1] = np.where(prim[second], b[second], b[second - 1])
        outcome[second - 1] = rng.integers(0, 2, second.size, dtype=np.uint8)
        keep = np.ones(m, dtype=bool)
        keep[second] = False
        s, b, outcome = s[keep], b[keep], outcome[keep]
    return FrameDetections(s.astype(np.uint64), b, outcome)


def outcome_gains(mu, eta_0, eta_1, p_dc):
    """Clicks per pulse reported as outcome 0 and 1 with detector efficiencies eta_0, eta_1
    (mismatch): the signal's target t is uniform; P(d) = sum_t 1/2 [s_t (1 - p_dc/2 if t = d,
    else p_dc/2) + (1 - s_t) Y0 / 2], s_t = 1 - e^{-eta_t mu}, Y0 = 1 - (1 - p_dc)^2."""
    y0 = 1.0 - (1.0 - p_dc) ** 2
    s = [-np.expm1(-np.multiply(eta, mu)) for eta in (eta_0, eta_1)]
    background = sum(0.5 * (1.0 - st) * y0 / 2.0 for st in s)
    return tuple(background + 0.5 * (s[d] * (1 - p_dc / 2) + s[1 - d] * p_dc / 2)
                 for d in (0, 1))


def saturated_counts(p: float, effects: DetectorEffects, rounds: int = 200) -> tuple[float, float]:
    """(R, P_eff) of one detector with ideal clicks p per slot: counted clicks per slot and the
    afterpulse share among them. Potential clicks r = p + R P_eff per slot (Bernoulli), live
    fraction L = 1/(1 + r D), R = r L. An afterpulse k slots after its counted parent counts
    if the detector is live then, l(k), and no ideal click shares its slot: P_eff = (1 - p)
    sum_k w_k l(k), w_k the release weights of ``afterpulse_yield``. l(k) is the renewal
    liveness after a count (``_liveness_after_count``), 1 just after the dead time, tending to L;
    taking L itself for every k (parent and liveness uncorrelated) ran 4-9 % low."""
    if effects.afterpulse_probability <= 0:
        return float(counted_rate(p, effects.dead_slots)), 0.0
    dead, a = effects.dead_slots, 1.0 / effects.decay_slots
    counted, share = float(counted_rate(p, dead)), afterpulse_yield(effects)
    for _ in range(rounds):  # a contraction for P_ap < 1: converges in a few dozen rounds
        r = min(p + counted * share, 1.0)
        live = 1.0 / (1.0 + r * dead)
        # l(k) rings around L with the renewal cycle D + 1/r, damped within a few D; the
        # release weights fall as e^{-k/decay}: past either, l(k) = L is exact enough (1e-6)
        span = dead + 1 + int(min(40.0 * effects.decay_slots, 12.0 * (dead + 1)
                                  + min(4.0 / r, 40.0 * (dead + 1))))
        ell = _liveness_after_count(r, dead, span)
        k = np.arange(dead + 1, span + 1)
        head = float(np.dot(np.exp(-k * a), ell[dead + 1:]))
        tail = math.exp(-(span + 1) * a) / -math.expm1(-a) * live  # l(k) = L beyond the span
        new = (1.0 - p) * effects.afterpulse_probability * -math.expm1(
            -effects.gate_fraction * a) * (head + tail)
        done = abs(new - share) <= 1e-12 * max(share, 1e-300) and abs(r * live - counted) <= (
            1e-12 * counted)
        counted, share = r * live, new
        if done:
            break
    return counted, share


def _liveness_after_count(r: float, dead: int, span: int) -> np.ndarray:
    """l(k), k = 0..span: probability the detector is live k slots after a counted click, with
    Bernoulli(r) potential clicks: blind for k <= D, then l(k) = 1 - r sum_{j=k-D}^{k-1} l(j)
    (at most one count in any D slots; a count at j needs liveness and a click)."""
    ell = np.zeros(span + 1)
    window = 0.0  # r * sum of l over the last D slots
    for k in range(dead + 1, span + 1):
        ell[k] = 1.0 - window
        window += r * ell[k]
        if k - dead > dead:
            window -= r * ell[k - dead]
    return ell


def counted_gain_and_errors(q_mu, eq_mu, p_mean: float, effects: DetectorEffects
                            ) -> tuple[float, float, float]:
    """(gain, error gain, afterpulse share) of pulses of one intensity, after the detectors:
    ideal clicks Q_mu survive with the live fraction L (blinding is independent of the slot),
    afterpulses add 2 R P_eff clicks per slot, half of them errors. p_mean: ideal clicks per
    slot per detector over the intensity mix."""
    counted, share = saturated_counts(p_mean, effects)
    live = counted * (1.0 - share) / p_mean if p_mean > 0 else 1.0
    after = 2.0 * counted * share
    return float(q_mu * live + after), float(eq_mu * live + after / 2.0), float(share)
