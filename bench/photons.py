"""Photon-layer throughput: pulse-equivalents per second of ``detect_frame`` on one core, and
through the daemon.

WCP source mu = 0.5, detector efficiency 0.1, 0.2 dB/km, p_dc = 1e-6, e_det = 1.5 %, at 25 and
50 km; 1e9 pulses per case, processed in daemon-sized frames (1e6 = 10 ms at 100 MHz, and 1e7),
with ideal detectors and with detector effects on (1 us dead time = 100 slots, 10 % afterpulse
traps released after ~1 us: ``apply_effects`` after each frame), reported as a ratio to off.
Daemon cases: a real daemon (in this process) runs a 100 MHz source at 25 km for 2 emulated
seconds with frame_ms 10 and 0.001 (catching up by coalescing frames) and bob reads the
detections over TCP; reported: its lag behind the clock, messages, CPU per emulated second.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import trio

from emulator.physics import detector_effects as fx
from emulator.physics.channels import transmittance
from emulator.physics.detection import detect_frame
from emulator.physics.detectors import background_yield, gain

PULSES = 10**9
MU, ETA_DET, ALPHA, P_DC, E_DET = 0.5, 0.1, 0.2, 1e-6, 0.015
RESULT = Path(__file__).resolve().parent / "results" / "photons.json"
DAEMON_SECONDS = 2.0
EFFECTS = fx.DetectorEffects(dead_slots=100, afterpulse_probability=0.1, decay_slots=100.0)


def run_case(length_km: float, frame: int, pulses: int = PULSES,
             effects: fx.DetectorEffects | None = None) -> dict:
    eta = float(transmittance(length_km, ALPHA)) * ETA_DET
    rng = np.random.default_rng(2024)
    memory = fx.DetectorMemory()
    detections = 0
    start = time.process_time()
    wall = time.perf_counter()
    for s in range(0, pulses, frame):
        found = detect_frame(rng, b"bench-key", s, s + frame, [MU], [1.0], eta, P_DC, E_DET)
        if effects is not None:
            found = fx.apply_effects(rng, found, s + frame, effects, memory)[0]
        detections += found.slot.size
    cpu = time.process_time() - start
    wall = time.perf_counter() - wall
    q = float(gain(MU, eta, background_yield(P_DC)))
    return {
        "length_km": length_km,
        "detector_effects": effects is not None,
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


async def _daemon_case(frame_ms: float) -> dict:
    from emulator.child_config import DaemonConfig, DaemonLink
    from emulator.daemon import protocol as p
    from emulator.daemon.server import serve
    from emulator.scenario import Detector, QuantumLink, Source
    from nodes.daemon_client import open_daemon

    quantum = QuantumLink(source=Source(rate_hz=1e8, mu=MU), frame_ms=frame_ms,
                          attenuation_db_per_km=ALPHA,
                          detector=Detector(efficiency=ETA_DET, dark_count_probability=P_DC,
                                            misalignment=E_DET))
    config = DaemonConfig("bench", time.time(), 1.0, 1, {"alice": "a", "bob": "b"},
                          [DaemonLink("ab", "alice", "bob", 25.0, quantum)])
    messages = detections = 0
    async with trio.open_nursery() as nursery:
        daemon = await nursery.start(serve, config)
        async with (open_daemon("127.0.0.1", daemon.port, "alice", "a") as alice,
                    open_daemon("127.0.0.1", daemon.port, "bob", "b") as bob):
            feed = bob.detections("ab")
            await bob.request(p.DetectorOpen, link="ab")

            async def read() -> None:
                nonlocal messages, detections
                async for message in feed:
                    messages += 1
                    detections += len(message.outcome)
                    if message.last:
                        return

            cpu = time.process_time()
            async with trio.open_nursery() as reading:
                reading.start_soon(read)
                await alice.request(p.SourceStart, link="ab", prf_key=b"bench-key-000000")
                await trio.sleep(DAEMON_SECONDS)
                stopped = await alice.request(p.SourceStop, link="ab")
            cpu = time.process_time() - cpu
            stats = await bob.request(p.StatsRequest)
        nursery.cancel_scope.cancel()
    return {"frame_ms": frame_ms, "pulses": stopped.pulses, "detections": detections,
            "messages": messages, "lag_worst_s": stats.lag_s, "lag_recent_s": stats.lag_recent_s,
            "cpu_s_per_emulated_s": cpu / DAEMON_SECONDS}  # daemon and bob (one process)


def main() -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core (numpy here is single-threaded)
    cases = [run_case(length, frame) for length in (25.0, 50.0) for frame in (10**6, 10**7)]
    on = [run_case(length, frame, effects=EFFECTS) for length in (25.0, 50.0)
          for frame in (10**6, 10**7)]
    for off, case in zip(cases, on, strict=True):
        case["cpu_ratio_to_off"] = off["pulse_eq_per_cpu_s"] / case["pulse_eq_per_cpu_s"]
    cases += on
    daemon = [trio.run(_daemon_case, frame_ms) for frame_ms in (10.0, 0.001)]
    at_50 = min(c["pulse_eq_per_cpu_s"] for c in on if c["length_km"] == 50.0)
    result = {"benchmark": "photons.detect_frame", "cases": cases, "daemon": daemon,
              "target_pulse_eq_per_s_at_50km": 1e9,
              "effects_on_50km_worst_pulse_eq_per_cpu_s": at_50,  # robust to a loaded host
              "meets_target": at_50 >= 1e9}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    out = main()
    print(f"effects on, 50 km, worst frame size: {out['effects_on_50km_worst_pulse_eq_per_cpu_s']:.3g}"
          f" pulse-eq per CPU s (target 1e9: {'met' if out['meets_target'] else 'NOT met'})")
    for case in out["cases"]:
        print(f"{case['length_km']:5.1f} km frame {case['frame_pulses']:>9,} "
              f"{'effects on ' if case['detector_effects'] else 'ideal      '}: "
              f"{case['pulse_eq_per_s']:.3g} pulse-eq/s ({case['pulse_eq_per_cpu_s']:.3g} per CPU s), "
              f"{case['detections_per_s']:.3g} det/s")
