"""result.json ``links[].raman``: the Raman model of a link whose classical light shares the
quantum fibre (``[links.quantum.raman]``), computed by the orchestrator from what was measured.

Inputs: the relay's bytes per direction over the run (duty cycle = 8 bytes / (line rate x
emulated seconds), ``physics.raman.duty_cycle``) and the daemon's pulse-weighted mean of the
noise it applied (it follows the relays' 0.25 s traffic windows, so it includes the start-up
ramp). Outputs: noise photons per gate from both, and the BB84 QBER model
``physics.raman.bb84_qber`` at the signal intensity with the applied noise (and without).
"""

from __future__ import annotations

from emulator.daemon.traffic import raman_source
from emulator.physics import channels, raman
from emulator.scenario import Link


def raman_section(link: Link, relay: dict, daemon_state: dict | None,
                  emulated_s: float) -> dict | None:
    """The ``raman`` entry of one link, or None when it has no Raman config."""
    q = link.quantum
    if q is None or q.raman is None:
        return None
    source = raman_source(q.raman, link.length_km, q.attenuation_db_per_km,
                          q.detector.gate_width_ns, q.source.rate_hz, q.detector.efficiency)
    rate = q.raman.line_rate_mbps * 1e6
    out: dict = {"line_rate_mbps": q.raman.line_rate_mbps}
    if emulated_s > 0 and relay.get("bytes_ab") is not None:
        duty_ab = float(raman.duty_cycle(relay["bytes_ab"], emulated_s, rate))
        duty_ba = float(raman.duty_cycle(relay["bytes_ba"], emulated_s, rate))
        out.update(duty_ab=duty_ab, duty_ba=duty_ba,
                   noise_photons_measured=source.photons(duty_ab, duty_ba))
    eta = float(channels.transmittance(link.length_km, q.attenuation_db_per_km)) * (
        q.detector.efficiency)
    p_dc = q.detector.per_gate_dark_count(q.source.rate_hz)
    mu, e_det = q.source.mu, q.detector.misalignment
    out["qber_model_quiet"] = float(raman.bb84_qber(mu, eta, p_dc, e_det, 0.0))
    if daemon_state is not None:
        n = daemon_state.get("noise_photons_mean", 0.0)
        out.update(noise_photons_applied=n,
                   duty_ab_applied=daemon_state.get("duty_ab_mean"),
                   duty_ba_applied=daemon_state.get("duty_ba_mean"),
                   qber_model=float(raman.bb84_qber(mu, eta, p_dc, e_det, n)),
                   depolarising_probability=float(raman.depolarising_probability(
                       n / q.detector.efficiency)))
    return out
