"""Photon-layer throughput: pulse-equivalents per second of ``detect_frame`` on one core.

WCP source mu = 0.5, detector efficiency 0.1, 0.2 dB/km, p_dc = 1e-6, e_det = 1.5 %, at 25 and
50 km; 1e9 pulses per case, processed in daemon-sized frames (1e6 = 10 ms at 100 MHz, and 1e7).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from emulator.physics.channels import transmittance
from emulator.physics.detection import detect_frame
from emulator.physics.detectors import background_yield, gain

PULSES = 10**9
MU, ETA_DET, ALPHA, P_DC, E_DET = 0.5, 0.1, 0.2, 1e-6, 0.015
RESULT = Path(__file__).resolve().parent / "results" / "photons.json"


def run_case(length_km: float, frame: int, pulses: int = PULSES) -> dict:
    eta = float(transmittance(length_km, ALPHA)) * ETA_DET
    rng = np.random.default_rng(2024)
    detections = 0
    start = time.process_time()
    wall = time.perf_counter()
    for s in range(0, pulses, frame):
        detections += detect_frame(rng, b"bench-key", s, s + frame, [MU], [1.0], eta, P_DC,
                                   E_DET).slot.size
    cpu = time.process_time() - start
    wall = time.perf_counter() - wall
    q = float(gain(MU, eta, background_yield(P_DC)))
    return {
        "length_km": length_km,
        "frame_pulses": frame,
        "pulses": pulses,
        "detections": detections,
        "gain_measured": detections / pulses,
        "gain_formula": q,
        "wall_s": wall,
        "cpu_s": cpu,
        "pulse_eq_per_s": pulses / wall,
        "detections_per_s": detections / wall,
        "pulse_eq_per_cpu_s": pulses / cpu,  # robust to other load on a shared machine
    }


def main() -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core (numpy here is single-threaded)
    cases = [run_case(length, frame) for length in (25.0, 50.0) for frame in (10**6, 10**7)]
    result = {"benchmark": "photons.detect_frame", "cases": cases,
              "target_pulse_eq_per_s_at_50km": 1e9}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    for case in main()["cases"]:
        print(f"{case['length_km']:5.1f} km frame {case['frame_pulses']:>9,}: "
              f"{case['pulse_eq_per_s']:.3g} pulse-eq/s ({case['pulse_eq_per_cpu_s']:.3g} per CPU s), "
              f"{case['detections_per_s']:.3g} det/s")
