"""What Cascade should leak on a block, simulated in memory with the project's own cores.

The e2e runs judge their reported leakage against the *model* QBER (a node cannot know its
block's true error count, and the sampled QBER of a few thousand bits is too noisy to judge
by). This simulates blocks of the same size with Binomial(n, q) errors, the receiver's QBER
estimate drawn from a sample of the same size, and returns the mean and standard deviation of
``leak / (n h(q))`` per block: the band the run's figure must fall in.
"""

from __future__ import annotations

import numpy as np

from emulator.physics.entropy import binary_entropy
from nodes.qkd.cascade import CascadeDone, CascadeReceiver, CascadeSender


def leak_per_shannon_bit(n: int, q: float, sample_bits: int, schedule: str, blocks: int,
                         seed: int = 11) -> tuple[float, float]:
    """(mean, sd) over ``blocks`` simulated blocks of ``leaked_bits / (n h(q))``."""
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(blocks):
        alice = rng.integers(0, 2, n, dtype=np.uint8)
        bob = alice ^ (rng.random(n) < q).astype(np.uint8)
        q_est = max(rng.binomial(sample_bits, q), 1) / sample_bits
        tx = CascadeSender(alice)
        rx = CascadeReceiver(bob, q_est, schedule, seed=int(rng.integers(2**62)))
        message = rx.start()
        for _ in range(100_000):
            message = rx.receive_reply(tx.receive_query(message))
            if isinstance(message, CascadeDone):
                break
        ratios.append(rx.leaked_bits / (n * float(binary_entropy(q))))
    return float(np.mean(ratios)), float(np.std(ratios, ddof=1))
