"""BB84 over a satellite pass: the receiver's per-batch counts, and result.json's ``pass``
section (measured gain and sifted rate against time beside the pass model, per pass totals).

``sift_batches`` runs at the receiver on what it measured; ``pass_section`` runs in the
orchestrator's merge, where the scenario (the pass) is known. Docs: docs/scenarios.md.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from emulator.physics import decoy, detectors, satellite
from emulator.scenario import Link

BIN_S = 10.0  # result.json's time bins (emulated seconds of source output)
MODEL_STEP_S = 0.5  # the model is averaged over a bin at this step
MICIUS_RANGES_KM = (645.0, 1200.0)  # Liao et al. (2017)'s closest and farthest ranges


def sift_batches(records) -> dict[str, list]:
    """Per sifted batch, in slot order: last slot (exclusive), detections per intensity and
    kept key bits (the receiver's own counts)."""
    ordered = sorted(records, key=lambda r: r.batch)
    return {"slot_end": [int(r.slot_end) for r in ordered],
            "detections": [[int(d) for d in r.detections] for r in ordered],
            "sifted_bits": [len(r.key) for r in ordered]}


def _rates(link: Link, kept: float, ec_f: float, t_run: np.ndarray) -> dict[str, np.ndarray]:
    """Model per pulse at run times: mean click probability over the intensity mix, signal
    gain, GLLP secret bits per pulse."""
    q = link.quantum
    source, det = q.source, q.detector
    eta = np.maximum(q.pass_.transmittance(t_run), 0.0) * det.efficiency * 10 ** (
        -q.attenuation_db_per_km * link.length_km / 10)
    y0 = float(detectors.background_yield(det.dark_count_probability))
    mix = sum(w * detectors.gain(mu, eta, y0) for mu, w in
              zip(source.intensities, source.intensity_probabilities, strict=True))
    signal = detectors.gain(source.mu, eta, y0)
    errors = detectors.error_gain(source.mu, eta, y0, det.misalignment)
    with np.errstate(all="ignore"):
        gllp = np.nan_to_num(decoy.gllp_rate(source.mu, source.decoys[0], np.maximum(eta, 1e-15),
                                             y0, det.misalignment, f=ec_f, q=kept))
    return {"mix": np.asarray(mix), "signal": np.asarray(signal), "errors": np.asarray(errors),
            "gllp": np.maximum(gllp, 0.0) * (eta > 0)}


def pass_section(link: Link, sample_fraction: float, ec_f: float,
                 batches: dict[str, list] | None) -> dict:
    """Time bins of ``BIN_S``: measured gain (all intensities) with its binomial sigma and
    sifted rate, beside the model; per-pass totals; the model at the Micius ranges."""
    q = link.quantum
    spec, rate = q.pass_, q.source.rate_hz
    kept = q.source.intensity_probabilities[0] * 0.5 * (1 - sample_fraction)
    out: dict = {"bin_s": BIN_S, "source_rate_hz": rate, "bins": []}
    if batches and batches["slot_end"]:
        ends = np.asarray(batches["slot_end"], dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        clicks = np.asarray(batches["detections"], dtype=np.int64).sum(axis=1)
        sifted = np.asarray(batches["sifted_bits"], dtype=np.int64)
        which = np.floor((ends - 1) / rate / BIN_S).astype(np.int64)  # its last slot's bin
        for k in np.unique(which):
            sel = which == k
            s0, s1 = int(starts[sel][0]), int(ends[sel][-1])
            pulses = s1 - s0
            n_steps = max(1, math.ceil(pulses / rate / MODEL_STEP_S))
            t = (s0 + (np.arange(n_steps) + 0.5) * pulses / n_steps) / rate
            model = _rates(link, kept, ec_f, t)
            p_mix = float(np.mean(model["mix"]))
            loss = float(np.asarray(spec.loss_at(0.5 * (s0 + s1) / rate)))
            entry = {
                "t_s": 0.5 * (s0 + s1) / rate, "pass_t_s": spec.start_s + 0.5 * (s0 + s1) / rate,
                "pulses": pulses,
                "loss_db": loss if math.isfinite(loss) else None,
                "detections": int(clicks[sel].sum()), "gain": int(clicks[sel].sum()) / pulses,
                "predicted_gain": p_mix,
                "predicted_signal_gain": float(np.mean(model["signal"])),
                "predicted_signal_errors": float(np.mean(model["errors"])),
                "gain_sigma": math.sqrt(p_mix * (1 - p_mix) / pulses),
                "sifted_rate_bps": int(sifted[sel].sum()) * rate / pulses,
                "predicted_sifted_rate_bps": float(np.mean(model["signal"])) * kept * rate,
                "predicted_gllp_rate_bps": float(np.mean(model["gllp"])) * rate,
            }
            if not spec.is_table:
                entry["range_km"] = float(np.asarray(spec.geometry(entry["t_s"]).range_km))
                entry["light_time_ms"] = float(satellite.light_time(entry["range_km"])) * 1e3
            out["bins"].append(entry)
        bins = out["bins"]
        seconds = sum(b["pulses"] for b in bins) / rate
        out["per_pass"] = {
            "source_s": seconds,
            "sifted_bits": int(sifted.sum()),
            "predicted_sifted_bits": sum(b["predicted_sifted_rate_bps"] * b["pulses"] / rate
                                         for b in bins),
            "predicted_gllp_bits": sum(b["predicted_gllp_rate_bps"] * b["pulses"] / rate
                                       for b in bins),
            "worst_gain_deviation_sigma": max(abs(b["gain"] - b["predicted_gain"])
                                              / b["gain_sigma"] for b in bins),
        }
    if not spec.is_table:
        out["model_at_range"] = model_at_ranges(link, kept, ec_f, MICIUS_RANGES_KM)
    return out


def model_at_ranges(link: Link, kept: float, ec_f: float, ranges_km) -> dict[str, dict]:
    """Loss, sifted and GLLP key rates of the pass model where the range is ``ranges_km``
    (elevation from the geometry; the same optics)."""
    spec = link.quantum.pass_
    out = {}
    for big_l in ranges_km:
        e = float(satellite.elevation(spec.altitude_km, big_l))
        point = satellite.PassPoint(np.zeros(1), np.array([big_l]), np.array([e]),
                                    np.array([e >= math.radians(spec.min_elevation_deg)]))
        optics = satellite.Optics(spec.divergence_rad, spec.aperture_radius_m, spec.jitter_rad,
                                  spec.t_zenith, spec.eta_fixed)
        loss = float(satellite.pass_loss_db(point, optics)[0])
        shifted = _at_loss(link, loss)
        model = _rates(shifted, kept, ec_f, np.zeros(1))
        rate = link.quantum.source.rate_hz
        out[f"{big_l:g}_km"] = {
            "elevation_deg": math.degrees(e), "loss_db": loss,
            "sifted_rate_bps": float(model["signal"][0]) * kept * rate,
            "gllp_rate_bps": float(model["gllp"][0]) * rate}
    return out


def _at_loss(link: Link, loss_db: float) -> Link:
    """The link with its pass replaced by a constant loss (a two-point table)."""
    spec = msgspec.structs.replace(link.quantum.pass_, start_s=0.0, loss_t_s=[-1.0, 1.0],
                                   loss_db=[loss_db, loss_db])
    quantum = msgspec.structs.replace(link.quantum, pass_=spec)
    return msgspec.structs.replace(link, quantum=quantum)


def pass_predictions(section: dict, fixed: dict) -> dict:
    """``predicted`` for a pass: signal gain, QBER, sifted rate and GLLP bits per pulse
    averaged over the bins' pulses (the fixed-length formulas do not apply; PLOB dropped)."""
    bins = section.get("bins") or []
    pulses = sum(b["pulses"] for b in bins)
    out = {k: v for k, v in fixed.items() if k == "ec_efficiency_used"}
    if not pulses:
        return out

    def mean(key: str) -> float:
        return sum(b[key] * b["pulses"] for b in bins) / pulses

    rate = section["source_rate_hz"]
    out.update({"gain": mean("predicted_signal_gain"),
                "qber": mean("predicted_signal_errors") / mean("predicted_signal_gain"),
                "sifted_rate_bps": mean("predicted_sifted_rate_bps"),
                "gllp_bits_per_pulse": mean("predicted_gllp_rate_bps") / rate,
                "gllp_rate_bps": mean("predicted_gllp_rate_bps")})
    return out
