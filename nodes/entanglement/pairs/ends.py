"""End-of-run logic of the ``entanglement.pairs`` ends as sans-I/O cores (no I/O, no clock).

``SenderCore`` (end ``a``) turns measured batches into ``Outcomes`` until ``count`` pairs are
measured. ``ReportCore`` (end ``b``) joins a's outcomes with its own measurements of the same
end-to-end pairs, knows when the run is settled (``Finished`` seen and every outcome of ``a``
joined) and builds the report from what the node measured or was told: outcomes, counts and
per-pair storage times per node (from the daemon's timestamps). The model fidelity is not
computed here: the orchestrator predicts it (``pairs/model.py``).

Storage times are kept as a uniform subsample of at most ``STORAGE_SAMPLE`` pairs (reservoir
sampling, Vitter's algorithm R), so a report stays bounded however many pairs a run delivers.
"""

from __future__ import annotations

import statistics

import numpy as np

from nodes.entanglement import estimate
from nodes.entanglement.swapping import EndToEnd, Finished, Outcomes
from nodes.errors import MalformedMessage, UnexpectedMessage

STORAGE_SAMPLE = 1000  # pairs whose per-node storage times the report carries
LATENCY_SAMPLE = 1000  # swap-to-measurement latencies kept for the median


class Reservoir:
    """A uniform random subsample of at most ``cap`` items of a stream (algorithm R)."""

    def __init__(self, cap: int, rng: np.random.Generator) -> None:
        self.cap, self.rng, self.seen, self.items = cap, rng, 0, []

    def add(self, item) -> None:
        if len(self.items) < self.cap:
            self.items.append(item)
        else:
            j = int(self.rng.integers(0, self.seen + 1))
            if j < self.cap:
                self.items[j] = item
        self.seen += 1


class SenderCore:
    """End ``a``: keep the first ``count`` measured pairs and tell ``b`` their outcomes."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.measured = 0

    @property
    def done(self) -> bool:
        return self.measured >= self.count

    def on_measured(self, batch: list[EndToEnd], bases: list[str], bits: np.ndarray,
                    t: float) -> Outcomes | None:
        """The ``Outcomes`` message for a measured batch (None once ``count`` is reached)."""
        keep = min(len(batch), self.count - self.measured)
        if keep <= 0:
            return None
        self.measured += keep
        return Outcomes([e.mine.pair for e in batch[:keep]], "".join(bases[:keep]),
                        bits[:keep].tobytes(), [t - e.mine.t_stored for e in batch[:keep]])

    def finished(self) -> Finished:
        return Finished(self.measured)


class ReportCore:
    """End ``b``: join outcomes by a's pair id; ``settled`` once nothing is left to join.

    ``path`` is the app's node path (a, repeaters..., b): storage times are reported per
    node in that order. Peer errors (lengths that disagree, a basis other than the public
    rule's, outcomes after ``Finished``) raise ``RemoteProtocolError`` subclasses.
    """

    def __init__(self, name: str, path: list[str], rng: np.random.Generator) -> None:
        self.name, self.path = name, path
        self._mine: dict[int, tuple[str, int, float, dict[str, float]]] = {}
        self._theirs: dict[int, tuple[str, int, float]] = {}
        self.joined = {basis: [] for basis in estimate.BASES}  # basis -> [(bit_a, bit_b)]
        self.pairs = 0
        self.storage = Reservoir(STORAGE_SAMPLE, rng)
        self.latencies = Reservoir(LATENCY_SAMPLE, rng)
        self.t_first = self.t_last = None
        self.announced: int | None = None  # a's count in ``Finished``
        self._next_partial = 1

    def partial_due(self) -> bool:
        """True each time the joined pairs double (1, 2, 4, ...): when the shell publishes
        its partial result, log n times per run."""
        if self.pairs < self._next_partial:
            return False
        while self._next_partial <= self.pairs:
            self._next_partial *= 2
        return True

    @property
    def settled(self) -> bool:
        """``Finished`` seen and every outcome ``a`` announced is joined with ours."""
        return self.announced is not None and not self._theirs

    def on_measured(self, batch: list[EndToEnd], bases: list[str], bits: np.ndarray,
                    t: float) -> None:
        """Our measurements (bits undone of the swaps' Pauli frame)."""
        for e, basis, bit in zip(batch, bases, bits, strict=True):
            flipped = int(bit) ^ estimate.flips(e.frame, basis)
            self._mine[e.far_pair] = (basis, flipped, t - e.mine.t_stored, e.stored)
            if e.t_last_swap > float("-inf"):
                self.latencies.add(t - e.t_last_swap)
        self.t_first = t if self.t_first is None else min(self.t_first, t)
        self.t_last = t if self.t_last is None else max(self.t_last, t)
        self._join()

    def on_outcomes(self, msg: Outcomes) -> None:
        n = len(msg.pairs)
        if not (len(msg.bases) == len(msg.outcomes) == len(msg.stored) == n):
            raise MalformedMessage(f"outcomes: {n} pairs, {len(msg.bases)} bases, "
                                   f"{len(msg.outcomes)} bits, {len(msg.stored)} times")
        if self.announced is not None:
            raise UnexpectedMessage("outcomes after finished")
        if any(b > 1 for b in msg.outcomes) or set(msg.bases) - set(estimate.BASES):
            raise MalformedMessage("outcomes: a bit other than 0/1 or a basis other than XYZ")
        for pair, basis, bit, stored in zip(msg.pairs, msg.bases, msg.outcomes, msg.stored,
                                            strict=True):
            if pair in self._theirs:
                raise UnexpectedMessage(f"outcome of pair {pair} sent twice")
            self._theirs[pair] = (basis, bit, stored)
        self._join()

    def on_finished(self, msg: Finished) -> None:
        if self.announced is not None:
            raise UnexpectedMessage("finished twice")
        self.announced = msg.measured

    def _join(self) -> None:
        for pair in [k for k in self._theirs if k in self._mine]:
            basis_a, bit_a, stored_a = self._theirs.pop(pair)
            basis_b, bit_b, stored_b, at_repeaters = self._mine.pop(pair)
            if basis_a != basis_b:
                raise UnexpectedMessage(f"pair {pair}: a measured {basis_a}, the rule says "
                                        f"{basis_b}")
            self.joined[basis_a].append((bit_a, bit_b))
            self.pairs += 1
            self.storage.add([stored_a, *(at_repeaters.get(r, 0.0) for r in self.path[1:-1]),
                              stored_b])

    def entry(self) -> dict:
        """The ``role = "report"`` entry: estimate, counts, storage-time sample."""
        samples = {}
        for basis, rows in self.joined.items():
            arr = np.array(rows, dtype=np.uint8).reshape(-1, 2)
            samples[basis] = (arr[:, 0], arr[:, 1])
        f, se = estimate.fidelity_from_correlations(samples)
        span = (self.t_last - self.t_first) if self.t_first is not None else 0.0
        latencies = self.latencies.items
        return {
            "section": "entanglement", "role": "report", "name": self.name,
            "path": self.path, "pairs": self.pairs,
            "pairs_per_s": self.pairs / span if span > 0 else None,
            "fidelity_mean": f, "fidelity_std": se,  # std = standard error of the estimate
            "unjoined_outcomes": len(self._theirs),
            "swap_latency_ms_median": statistics.median(latencies) * 1e3 if latencies else None,
            "samples_per_basis": {b: len(samples[b][0]) for b in estimate.BASES},
            "storage_s": {"nodes": self.path, "pairs": self.storage.seen,
                          "sample": self.storage.items},
        }
