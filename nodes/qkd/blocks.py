"""What a post-processing block is and how long its key may be (pure functions).

Both ends call these on the same records, so they agree on every number without trusting each
other's arithmetic: the block's estimate (decoy bounds, finite-key counts or a BBM92 sample),
the abort decision, the privacy-amplification output length with the measured leakage, the
authentication refill and the Toeplitz hash. The cores that exchange messages about blocks are
in ``postprocessing.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import numpy as np

from emulator.physics import decoy, decoy_lp, finite_key
from nodes.qkd.auth import KEY_BITS_PER_MESSAGE
from nodes.qkd.sifting import SIGNAL, BatchRecord
from nodes.qkd.toeplitz import ToeplitzHasher
from nodes.qkd.verification import BlockVerifier

MESSAGES_PER_BLOCK = 5  # block start, cascade done, verify tag, verify result, PA seed


@dataclass(frozen=True)
class PostprocessingConfig:
    intensities: tuple[float, ...]  # (mu, nu, 0): signal, weak decoy, vacuum
    probabilities: tuple[float, ...]
    block_bits: int = 100_000
    min_block_bits: int = 10_000  # a last, partial block shorter than this is not processed
    schedule: str = "original"
    qber_abort: float = 0.11
    eps_pa: float = 1e-10
    verification_tag_bits: int = 122
    finite_key: bool = False  # Lim et al. 2014 bounds; needs the "z_basis" key rule
    entangled: bool = False  # entanglement-based (BBM92): no multi-photon term
    # authenticated messages per sifting batch, charged to the block: BB84 sift request, sift
    # reply, sample result; BBM92 announce, answer
    sift_messages: int = 3
    eps_sec: float = 1e-10
    eps_cor: float = 1e-15
    # the sender's characterisation of its source, P(n) per intensity: LP decoy bounds
    photon_numbers: tuple[tuple[float, ...], ...] | None = None

    @property
    def key_rule(self) -> str:
        return "z_basis" if self.finite_key else "signal"


class SampleCounts(msgspec.Struct, frozen=True):
    """An entanglement-based block's QBER sample: bit and phase errors are taken as equal
    (symmetric bases), as in the BBM92 rate r = 1 - h(e) - f h(e)."""

    sample_bits: int
    sample_errors: int

    @property
    def e_mu(self) -> float:
        return self.sample_errors / self.sample_bits if self.sample_bits else 0.5


class FiniteCounts(msgspec.Struct, frozen=True):
    """A block's counts for the finite-key bound: key (Z) and test (X) basis, per intensity."""

    key_counts: tuple[int, ...]
    test_counts: tuple[int, ...]
    test_errors: tuple[int, ...]

    @property
    def e_mu(self) -> float:
        """Test-basis error rate over all intensities (Cascade's starting estimate)."""
        total = sum(self.test_counts)
        return sum(self.test_errors) / total if total else 0.5


@dataclass
class Block:
    """One block's inputs and outcome; the same at both ends except for the keys."""

    block: int
    records: list[BatchRecord]
    slot_start: int
    slot_end: int
    key: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    estimate: decoy.DecoyEstimate | FiniteCounts | SampleCounts | None = None
    finite: finite_key.FiniteKeyResult | None = None
    cascade_rounds: int = 0
    leaked_bits: int = 0
    out_len: int = 0
    auth_bits: int = 0
    final_key: np.ndarray | None = None  # delivered bits (after the auth refill)
    auth_material: bytes = b""
    status: str = "open"  # open | ok | aborted | failed_verification | rejected

    @property
    def n(self) -> int:
        return len(self.key)

    @property
    def first_batch(self) -> int:
        return self.records[0].batch

    @property
    def last_batch(self) -> int:
        return self.records[-1].batch


def estimate_block(records: list[BatchRecord], slot_start: int, slot_end: int,
                   config: PostprocessingConfig) -> decoy.DecoyEstimate | FiniteCounts:
    """The block's estimate: finite-key counts, a BBM92 sample, or the asymptotic decoy bounds."""
    if config.entangled:
        return SampleCounts(sum(r.sample_bits for r in records),
                            int(sum(r.errors[SIGNAL] for r in records)))
    if config.finite_key:
        return FiniteCounts(
            key_counts=tuple(int(x) for x in sum(r.key_counts for r in records)),
            test_counts=tuple(int(x) for x in sum(r.revealed for r in records)),
            test_errors=tuple(int(x) for x in sum(r.errors for r in records)))
    return decoy_estimate(records, slot_start, slot_end, config)


def decoy_estimate(records: list[BatchRecord], slot_start: int, slot_end: int,
                   config: PostprocessingConfig) -> decoy.DecoyEstimate:
    """Vacuum + weak decoy estimate for slots [slot_start, slot_end).

    Pulses per intensity are the expected counts (slots x probability): exact counts would
    cost one PRF evaluation per pulse; the relative difference is ~1/sqrt(pulses).
    """
    slots = slot_end - slot_start
    sent = [slots * p for p in config.probabilities]
    detected = sum(r.detections for r in records)
    matched = sum(r.matched for r in records)
    errors = sum(r.errors for r in records)
    sample = sum(r.sample_bits for r in records)
    rates = [errors[SIGNAL] / sample if sample else 0.5]
    rates += [errors[i] / matched[i] if matched[i] else 0.5
              for i in range(1, len(config.intensities))]
    mu, nu, _ = config.intensities
    est = decoy.estimate(mu, nu, tuple(round(s) for s in sent), tuple(int(d) for d in detected),
                         tuple(round(rate * d) for rate, d in zip(rates, detected)))
    if config.photon_numbers is None:
        return est
    gains = [est.q_mu, est.q_nu, est.y0]
    lp = decoy_lp.bounds(config.photon_numbers, gains,
                         [e * q for e, q in zip((est.e_mu, est.e_nu, rates[2]), gains)])
    return msgspec.structs.replace(est, y1_lower=lp.y1_lower, e1_upper=lp.e1_upper, q1=lp.q1)


def abort_reason(estimate: decoy.DecoyEstimate | FiniteCounts,
                 config: PostprocessingConfig) -> str | None:
    if estimate.e_mu > config.qber_abort:
        return f"QBER {estimate.e_mu:.4f} above {config.qber_abort}"
    if isinstance(estimate, (FiniteCounts, SampleCounts)):
        return None  # a too-small block shows as a zero length
    if estimate.y1_lower <= 0:
        return f"single-photon yield bound Y1_L = {estimate.y1_lower:.3g} <= 0"
    return None


def output_length(block: Block, config: PostprocessingConfig) -> int:
    """Privacy-amplification output length with the measured leakage.

    Asymptotic: GLLP, l = n Q1/Q_mu [1 - H2(e1)] - leak_EC - verification - 2 log2(1/eps_pa).
    Finite key: Lim et al. (2014) eq. (1) with the verification tag counted as leakage.
    Entanglement-based: l = n [1 - H2(e)] - leak_EC - verification - 2 log2(1/eps_pa).
    """
    est = block.estimate
    assert est is not None
    verification = BlockVerifier(config.verification_tag_bits).leaked_bits
    if isinstance(est, FiniteCounts):
        block.finite = finite_key.finite_key_length(
            tuple(config.intensities), tuple(config.probabilities), est.key_counts,
            est.test_counts, est.test_errors, block.leaked_bits + verification,
            eps_sec=config.eps_sec, eps_cor=config.eps_cor)
        return min(block.finite.length, block.n)
    if isinstance(est, SampleCounts):
        return decoy.entangled_key_length(block.n, est.e_mu, block.leaked_bits,
                                          verification_bits=verification, eps_pa=config.eps_pa)
    return decoy.secret_key_length(block.n, est.q_mu, est.q1, est.e1_upper, block.leaked_bits,
                                   verification_bits=verification, auth_bits=0,
                                   eps_pa=config.eps_pa)


def auth_cost_bits(block: Block, config: PostprocessingConfig) -> int:
    """Key bits of the one-time MACs this block's messages used (both directions)."""
    messages = (config.sift_messages * len(block.records) + 2 * block.cascade_rounds
                + MESSAGES_PER_BLOCK)
    return KEY_BITS_PER_MESSAGE * messages


def finish_block(block: Block, amplified: np.ndarray, config: PostprocessingConfig) -> None:
    """Split the privacy-amplified key: first the auth refill, then the delivered key."""
    block.auth_bits = min(len(amplified), auth_cost_bits(block, config))
    block.auth_material = np.packbits(amplified[: block.auth_bits]).tobytes()
    block.final_key = amplified[block.auth_bits:]
    block.status = "ok"


def records_key(records: list[BatchRecord]) -> np.ndarray:
    return np.concatenate([r.key for r in records]) if records else np.zeros(0, np.uint8)


def hash_block(block: Block, seed: np.ndarray) -> np.ndarray:
    if block.out_len <= 0:
        return np.zeros(0, dtype=np.uint8)
    return ToeplitzHasher(seed, block.n, block.out_len).hash(block.key)


def gllp_bits_per_pulse(estimate: decoy.DecoyEstimate, f: float, q: float) -> float:
    """R = q { -Q_mu f H2(E_mu) + Q1 [1 - H2(e1)] } for a measured estimate."""
    return float(decoy.gllp_key_rate(estimate.q_mu, estimate.e_mu, estimate.q1,
                                     estimate.e1_upper, f, q))

