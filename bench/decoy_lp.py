"""LP decoy estimator time per block (``emulator.physics.decoy_lp.bounds``, HiGHS).

One block = one call on three intensities' measured gains (model counts of a WCP, thermal and
heralded SPDC source at 25 km), at cut-offs 6, 12 (the default) and 24; the analytic Ma05
bound is timed next to it. CPU time (time.process_time) next to wall: the machine is shared.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from emulator.physics import channels, decoy, decoy_lp, detectors, sources

RESULT = Path(__file__).resolve().parent / "results" / "decoy_lp.json"
REPEATS = 200
SOURCES = {"wcp": (0.5, 0.1, 0.0), "thermal": (0.5, 0.1, 0.0), "spdc": (0.1, 0.02, 0.0)}


def _time(fn, repeats: int) -> dict:
    fn()  # warm-up (imports, HiGHS start-up)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return {"wall_ms_per_block": (time.perf_counter() - wall) / repeats * 1e3,
            "cpu_ms_per_block": (time.process_time() - cpu) / repeats * 1e3}


def main() -> dict:
    eta = float(channels.transmittance(25.0, 0.2)) * 0.1
    y0 = float(detectors.background_yield(1e-6))
    cases = []
    for kind, intensities in SOURCES.items():
        rows = [sources.distribution(kind, mu, 0.6, 1e-6) for mu in intensities]
        gains, errors = decoy_lp.model_counts(rows, eta, y0, 0.015)
        for cutoff in (6, 12, 24):
            timing = _time(lambda: decoy_lp.bounds(rows, gains, errors, cutoff), REPEATS)
            lp = decoy_lp.bounds(rows, gains, errors, cutoff)
            cases.append({"source": kind, "cutoff": cutoff, **timing,
                          "y1_lower": lp.y1_lower, "e1_upper": lp.e1_upper})
    mu, nu, _ = SOURCES["wcp"]
    rows = [sources.poisson_distribution(m) for m in SOURCES["wcp"]]
    gains, _ = decoy_lp.model_counts(rows, eta, y0, 0.015)
    analytic = _time(lambda: decoy.y1_lower(mu, nu, gains[0], gains[1], gains[2]), REPEATS)
    result = {"repeats": REPEATS, "lp": cases, "analytic_ma05": analytic}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
