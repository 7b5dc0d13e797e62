"""result.json's ``qkd`` entry of one ``qkd.bb84`` app: both halves joined, predictions added.

The sender reports its key hash, secret bits and CPU time, the receiver the rest (detections,
QBER, post-processing). The predictions are the closed-form physics the daemon is tested
against, computed here from the scenario (the orchestrator's knowledge, never a node's).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from emulator.physics import channels, decoy, decoy_lp, detector_effects, detectors
from emulator.results import fmt
from emulator.scenario import Link, Scenario
from nodes.qkd.bb84.pass_results import pass_predictions, pass_section
from nodes.qkd.bb84.spec import BB84App, link_of

SENDER_FIELDS = ("key_sha256_a", "secret_bits_a", "daemon_lag_s", "cpu_s_a", "cpu_s_daemon",
                 "remote_errors_a", "blocks_rejected_a")
DEFAULT_EC_EFFICIENCY = 1.16


def predicted_bb84(link: Link, app: BB84App, ec_efficiency: float | None) -> dict[str, float]:
    """Closed-form gain, QBER, sifted key rate and (with decoys) the GLLP rate of the link."""
    q = link.quantum
    assert q is not None
    source = q.source
    eta = channels.transmittance(link.length_km, q.attenuation_db_per_km) * q.detector.efficiency
    y0 = detectors.background_yield(q.detector.per_gate_dark_count(source.rate_hz))
    rows = source.photon_number_distributions()  # P(n) per intensity, any source kind
    gains, errors = decoy_lp.model_counts(rows, eta, y0, q.detector.misalignment)
    gain, error = gains[0], errors[0]
    effects = detector_effects.link_effects(q)
    if effects.active:  # dead time, afterpulses: docs/physics.md "Detector effects"
        p_mean = sum(w * g for w, g in zip(source.intensity_probabilities, gains)) / 2
        gain, error, share = detector_effects.counted_gain_and_errors(gain, error, p_mean,
                                                                       effects)
    signal_share = source.intensity_probabilities[0]
    kept = signal_share * 0.5 * (1 - app.sample_fraction)
    out = {
        "gain": gain,
        "qber": error / gain if gain else float("nan"),
        "sifted_rate_bps": source.rate_hz * gain * kept,
        "plob_bits_per_pulse": float(decoy.plob_bound(eta)),
    }
    if effects.active:
        out["afterpulse_share"] = share
    if app.postprocessing:
        f = ec_efficiency or DEFAULT_EC_EFFICIENCY
        out["ec_efficiency_used"] = f
        if app.decoy_estimator == "lp":
            out["gllp_bits_per_pulse"] = decoy_lp.gllp_rate(
                rows, eta, y0, q.detector.misalignment, f=f, q=kept)
        else:  # Ma05 on the source's counts: an overclaim when the source is not Poissonian
            out["gllp_bits_per_pulse"] = analytic_rate(source, gains, errors, f, kept)
    return out


def analytic_rate(source, gains: list[float], errors: list[float], f: float, kept: float) -> float:
    """GLLP with the vacuum + weak bounds on the model counts, as the analytic estimator does."""
    mu, nu = source.mu, source.decoys[0]
    y1 = float(decoy.y1_lower(mu, nu, gains[0], gains[1], gains[2]))
    if y1 <= 0:
        return 0.0
    e1 = float(decoy.e1_upper(nu, gains[1], errors[1] / gains[1], y1, gains[2]))
    return float(decoy.gllp_key_rate(gains[0], errors[0] / gains[0], decoy.q1_lower(mu, y1),
                                     e1, f, kept))


def realtime_factor(entry: dict, source_wall_s: float) -> float | None:
    """Wall seconds of source output per CPU second of the busiest process of the link.

    The daemon, sender and receiver are separate processes, each a pipeline stage; the one
    with the most CPU time bounds the throughput. >= 1 means every stage could keep up with
    the source in real time (the run's own ``completion_factor`` also counts the tail).
    """
    busiest = max((entry.get(k) or 0.0) for k in ("cpu_s_a", "cpu_s_b", "cpu_s_daemon"))
    return source_wall_s / busiest if busiest > 0 else None


def merge(scenario: Scenario, app: BB84App, entries: list[dict]) -> list[dict]:
    """Join the sender's and receiver's entries of the app's link and add predictions."""
    if not entries:
        return []
    link = link_of(scenario, app)
    merged: dict[str, Any] = {"link": link.id, "auth_rejected": 0}
    for entry in entries:
        merged["auth_rejected"] += entry.get("auth_rejected", 0)
        if entry.get("role") == "sender":
            for name in SENDER_FIELDS:
                merged[name] = entry.get(name)
            merged["sifted_bits_a"] = entry.get("sifted_bits")
            merged.setdefault("pulses", entry.get("pulses"))
        else:
            merged.update({k: v for k, v in entry.items()
                           if k not in ("role", "auth_rejected", "app")})
    merged["link"] = link.id  # the scenario's name for it, whatever a node wrote
    merged.setdefault("protocol", "bb84")
    source_s = (merged.get("pulses") or 0) / link.quantum.source.rate_hz
    merged["sifted_rate_bps"] = (merged.get("sifted_bits") or 0) / source_s if source_s else 0.0
    if merged.get("processed_slots"):
        merged["pa_bits_per_pulse"] = merged["pa_output_bits"] / merged["processed_slots"]
    merged["predicted"] = predicted_bb84(link, app, merged.get("ec_efficiency"))
    if link.quantum.pass_ is not None:  # time-varying loss: the model follows the pass
        merged["pass"] = pass_section(link, app.sample_fraction,
                                      merged["predicted"].get("ec_efficiency_used")
                                      or DEFAULT_EC_EFFICIENCY,
                                      merged.pop("sift_batches", None))
        merged["predicted"] = pass_predictions(merged["pass"], merged["predicted"])
    merged["realtime_factor"] = realtime_factor(merged, source_s / scenario.scenario.time_scale)
    return [merged]


def print_summary(console: Console, entry: dict) -> None:
    """One table: measured beside predicted, then post-processing and throughput."""
    table = Table(title=f"QKD {entry['link']} ({entry.get('protocol')})")
    table.add_column("metric")
    table.add_column("measured", justify="right")
    table.add_column("predicted", justify="right")
    predicted = entry.get("predicted", {})
    table.add_row("pulses", fmt(entry.get("pulses"), ",d"), "")
    table.add_row("detections", fmt(entry.get("detections"), ",d"), "")
    table.add_row("gain (detections/pulse)", fmt(entry.get("gain")), fmt(predicted.get("gain")))
    table.add_row("QBER", fmt(entry.get("qber")), fmt(predicted.get("qber")))
    table.add_row("sifted key bits", fmt(entry.get("sifted_bits"), ",d"), "")
    table.add_row("sifted key rate (bit/s)", fmt(entry.get("sifted_rate_bps"), ",.0f"),
                  fmt(predicted.get("sifted_rate_bps"), ",.0f"))
    table.add_row("daemon lag behind the clock (s)", fmt(entry.get("daemon_lag_s"), ".3f"), "")
    if "secret_bits" in entry and entry.get("blocks_ok") is not None:
        table.add_row("blocks ok / failed / aborted",
                      f"{entry['blocks_ok']} / {entry['blocks_failed']} / "
                      f"{entry['blocks_aborted']}", "")
        table.add_row("Cascade efficiency f", fmt(entry.get("ec_efficiency"), ".3f"), "")
        table.add_row("Y1 lower bound / e1 upper bound",
                      f"{fmt(entry.get('y1_lower'))} / {fmt(entry.get('e1_upper'))}", "")
        table.add_row("PA output bits per pulse", fmt(entry.get("pa_bits_per_pulse")),
                      fmt(predicted.get("gllp_bits_per_pulse")) + " (GLLP)")
        table.add_row("secret key bits (after auth refill)",
                      fmt(entry.get("secret_bits"), ",d"), "")
        table.add_row("secret key rate (bit/s)",
                      fmt(entry.get("secret_key_rate_bps"), ",.0f"), "")
        table.add_row("keys identical at both ends",
                      "yes" if entry.get("key_sha256_a") == entry.get("key_sha256_b")
                      else "NO", "")
        table.add_row("authentication rejects", fmt(entry.get("auth_rejected"), ",d"), "")
    table.add_row("realtime factor (source s / busiest process CPU s)",
                  fmt(entry.get("realtime_factor"), ".2f"), "")
    table.add_row("completion factor (source s / time to last key)",
                  fmt(entry.get("completion_factor"), ".3f"), "")
    console.print(table)
