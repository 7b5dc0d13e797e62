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

from emulator.physics.detection import FrameDetections

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
    and a click in the same slot. Clicks more than ``dead`` after the previous one are always
    counted; the loop walks only chains of closer clicks, all chains at once."""
    n = keys.size
    counted = np.zeros(n, dtype=bool)
    if n == 0:
        return counted
    start = np.ones(n, dtype=bool)
    start[1:] = np.diff(keys) > dead
    counted[start] = True
    frontier = np.flatnonzero(start[:-1] & ~start[1:])  # chain heads followed by a conflict
    for _ in range(n):
        if frontier.size == 0:
            break
        nxt = np.searchsorted(keys, keys[frontier] + dead, side="right")
        nxt = nxt[nxt < n]
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
    afterpulse (of any click, recursively) is drawn first and sorted once; rounds then settle
    which are present (parent counted) and counted, each at least the earliest disagreement.
    """
    if not effects.active and memory.pending_slot.size == 0:
        return found, EffectCounts()
    n_primary = found.slot.size
    slot = [found.slot.astype(np.int64), memory.pending_slot]
    det = [found.outcome, memory.pending_det]
    parent = [np.full(n_primary + memory.pending_slot.size, -1, dtype=np.int64)]
    size = n_primary + memory.pending_slot.size
    generation = np.flatnonzero(np.concatenate(slot) < slot_end)
    all_slot, all_det = np.concatenate(slot), np.concatenate(det)
    for _ in range(64):  # generations of potential afterpulses; each ~P_ap times the last
        k = _trap_delays(rng, generation.size, effects)
        src = generation[k >= 0]
        if src.size == 0:
            break
        child = all_slot[src] + k[k >= 0]
        slot.append(child)
        det.append(all_det[src])
        parent.append(src)
        generation = size + np.flatnonzero(child < slot_end)
        size += src.size
        all_slot, all_det = np.concatenate(slot), np.concatenate(det)
    parent_of = np.concatenate(parent)
    keys = all_slot + (all_det.astype(np.int64) << DETECTOR_SHIFT)
    order = np.argsort(keys, kind="stable")  # the one sort: rounds keep this order
    rank = np.empty(size, dtype=np.int64)
    rank[order] = np.arange(size)
    keys, s_slot, s_det = keys[order], all_slot[order], all_det[order]
    s_parent = parent_of[order]
    s_parent = np.where(s_parent >= 0, rank[np.maximum(s_parent, 0)], -1)
    dead = effects.dead_slots
    last = np.asarray(memory.last, dtype=np.int64)
    base = (s_slot < slot_end) & (s_slot > last[s_det] + dead)  # else blinded by a past frame
    orphan = s_parent < 0
    has_parent = np.flatnonzero(~orphan)
    # an ideal click with no potential click within `dead` either side is counted iff not
    # blinded by a past frame; rounds walk only the others (U) and the afterpulses
    near = np.zeros(size, dtype=bool)
    close = np.diff(keys) <= dead
    near[1:] |= close
    near[:-1] |= close
    counted = base & orphan & ~near
    u = np.flatnonzero(near | ~orphan)
    u_keys, u_base, u_parent = keys[u], base[u], s_parent[u]
    u_child = np.flatnonzero(u_parent >= 0)
    u_counted = counted[u]
    for _ in range(u.size + 1):  # each round settles at least the earliest disagreement
        present = u_base & (u_parent < 0)
        present[u_child] = u_base[u_child] & counted[u_parent[u_child]]
        idx = np.flatnonzero(present)
        now = np.zeros(u.size, dtype=bool)
        now[idx[non_paralysable(u_keys[idx], dead)]] = True
        if np.array_equal(now, u_counted):
            break
        u_counted = now
        counted[u] = now
    else:  # pragma: no cover - each round settles at least one event
        raise RuntimeError("detector effects did not settle")

    alive = orphan.copy()
    alive[has_parent] = counted[s_parent[has_parent]]
    later = alive & (s_slot >= slot_end)
    memory.pending_slot, memory.pending_det = s_slot[later], s_det[later]
    for d in (0, 1):
        mine = s_slot[counted & (s_det == d)]
        if mine.size:
            memory.last[d] = int(mine.max())
    is_primary = order < n_primary
    basis = np.zeros(size, dtype=np.uint8)
    basis[is_primary] = found.basis[order[is_primary]]
    coins = ~is_primary & counted
    basis[coins] = rng.integers(0, 2, int(np.count_nonzero(coins)), dtype=np.uint8)
    counts = EffectCounts(
        blocked=int(n_primary - np.count_nonzero(counted & is_primary)),
        afterpulses=int(np.count_nonzero(counted & ~is_primary)))
    return _records(rng, s_slot, s_det, basis, counted, is_primary), counts


def _trap_delays(rng: np.random.Generator, m: int, e: DetectorEffects) -> np.ndarray:
    """Per avalanche: slots to its afterpulse, or -1 (no trap, or released while blind or
    between gates)."""
    k = np.full(m, -1, dtype=np.int64)
    if e.afterpulse_probability <= 0 or m == 0:
        return k
    trapped = np.flatnonzero(rng.random(m) < e.afterpulse_probability)
    x = rng.exponential(e.decay_slots, trapped.size)
    whole = np.floor(x)
    ok = (x - whole < e.gate_fraction) & (whole > e.dead_slots)
    k[trapped[ok]] = whole[ok].astype(np.int64)
    return k


def _records(rng: np.random.Generator, slot: np.ndarray, det: np.ndarray, basis: np.ndarray,
             counted: np.ndarray, is_primary: np.ndarray) -> FrameDetections:
    """One record per slot; both detectors in one slot is a double click: a fair coin (the
    basis is the ideal click's, if one of the two is)."""
    idx = np.flatnonzero(counted)
    order = idx[np.lexsort((~is_primary[idx], slot[idx]))]  # by slot, the ideal click first
    s = slot[order]
    first = np.ones(s.size, dtype=bool)
    first[1:] = s[1:] != s[:-1]
    outcome = det[order].copy()
    double = np.flatnonzero(~first)  # the second click of a slot (other detector)
    outcome[double - 1] = rng.integers(0, 2, double.size, dtype=np.uint8)
    keep = order[first]
    return FrameDetections(slot[keep].astype(np.uint64), basis[keep], outcome[first])


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
    afterpulse share among them. An afterpulse counts only if its detector is live then
    (live fraction L = 1/(1 + r D), r = p + R P_eff): fixed point of R = r L, P_eff = P_ap L.
    Exact at low rate; an approximation (no correlation of liveness with the parent's click)
    when r D is not small."""
    p_ap = afterpulse_yield(effects)
    dead = effects.dead_slots
    counted = float(counted_rate(p, dead))
    share = p_ap
    for _ in range(rounds):  # a contraction for P_ap < 1: converges in a few dozen rounds
        r = p + counted * share
        live = 1.0 / (1.0 + r * dead)
        counted, share = r * live, p_ap * live
    return counted, share


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
