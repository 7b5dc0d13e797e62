"""What the daemon knows of each link beyond its config: faults on the quantum plane and the
classical traffic that shares the fibre (Raman noise). The one place link runtimes ask.

Sans-I/O: ``LinkStates.control`` takes a ``LinkControl`` (``control/link/<link>``),
``LinkStates.traffic`` a relay's ``TrafficReport`` (``relay/<link>/traffic``); the daemon's
MQTT task feeds them (``emulator.daemon.server``). Runtimes read, per link:

* ``transmittance_factor()``: 0 while the quantum plane is cut, else 10^(-extra_db/10) (a
  ``degrade``); multiply the link's transmittance by it (photon, heralded, flight runtimes).
* ``noise_photons()``: Raman noise photons detected per gate at the quantum receiver
  (``physics.raman.noise_photons``) from the measured duty cycle of each direction: traffic
  a->b is launched at the quantum sender's end (co-propagating), b->a at the receiver's
  (counter-propagating). ``physics.raman.effective_dark_count`` turns it into p_dc;
  ``noise_photons(efficiency=1)`` is the photon number at the fibre's output, for payloads
  (``physics.raman.depolarising_probability``).

``pulse_weighted`` accumulates what a runtime actually applied (per pulse), so the daemon can
report the mean noise and duty each link saw: the orchestrator's QBER model uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from emulator.physics import raman
from emulator.scenario import Raman
from emulator.telemetry import LinkControl, TrafficReport


@dataclass
class RamanSource:
    """A link's Raman parameters, as ``physics.raman`` takes them (SI where it wants SI)."""

    config: Raman
    length_km: float
    db_per_km: float
    gate_s: float  # the detector's gate (else the slot period)
    efficiency: float  # the detector's efficiency

    def photons(self, duty_ab: float, duty_ba: float, efficiency: float | None = None) -> float:
        """Noise photons per gate at the receiver for duty cycles a->b and b->a."""
        c = self.config
        watts = c.launch_power_mw * 1e-3
        return float(raman.noise_photons(
            watts * duty_ab, watts * duty_ba, c.rho_per_km_nm, c.filter_nm, self.length_km,
            self.db_per_km, c.wavelength_nm, self.gate_s,
            self.efficiency if efficiency is None else efficiency))


@dataclass
class LinkState:
    """Faults and measured classical load of one quantum link."""

    name: str
    raman: RamanSource | None = None
    cut: bool = False
    extra_db: float = 0.0
    duty_ab: float = 0.0
    duty_ba: float = 0.0
    weighted: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("pulses", "noise", "duty_ab", "duty_ba", "cut_pulses"), 0.0))

    def transmittance_factor(self) -> float:
        """0 while the quantum plane is cut, else the degrade's 10^(-extra_db/10)."""
        return 0.0 if self.cut else 10.0 ** (-self.extra_db / 10.0)

    def noise_photons(self, efficiency: float | None = None) -> float:
        """Raman photons per gate now (0 without a ``raman`` config)."""
        if self.raman is None:
            return 0.0
        return self.raman.photons(self.duty_ab, self.duty_ba, efficiency)

    def depolarising_probability(self) -> float:
        """Depolarising probability of a payload at the fibre's output (detector-less)."""
        return float(raman.depolarising_probability(self.noise_photons(efficiency=1.0)))

    def pulse_weighted(self, pulses: int, noise: float) -> None:
        """Record that ``pulses`` were sampled with ``noise`` photons per gate."""
        w = self.weighted
        w["pulses"] += pulses
        w["noise"] += pulses * noise
        w["duty_ab"] += pulses * self.duty_ab
        w["duty_ba"] += pulses * self.duty_ba
        w["cut_pulses"] += pulses if self.cut else 0

    def control(self, message: LinkControl) -> str | None:
        """Apply a fault to the quantum plane; its effect, or None if it has none here."""
        if message.plane == "classical" or message.action == "corrupt":
            return None
        if message.action == "cut":
            self.cut = True
            return "quantum transmittance 0"
        if message.action == "restore":
            was_cut, self.cut = self.cut, False
            if not was_cut:
                return "quantum plane was not cut"
            return f"quantum transmittance restored (extra {self.extra_db:g} dB)"
        self.extra_db = message.db
        return f"quantum extra attenuation {message.db:g} dB"

    def traffic(self, report: TrafficReport) -> None:
        """New duty cycles from a relay's bytes per direction over its window."""
        if self.raman is None or report.window_s <= 0:
            return
        rate = self.raman.config.line_rate_mbps * 1e6
        self.duty_ab = float(raman.duty_cycle(report.bytes_ab, report.window_s, rate))
        self.duty_ba = float(raman.duty_cycle(report.bytes_ba, report.window_s, rate))

    def report(self) -> dict[str, float]:
        """Mean noise and duty over the pulses sampled so far, and the fault state now."""
        w = self.weighted
        pulses = w["pulses"]
        mean = {k: w[k] / pulses if pulses else 0.0 for k in ("noise", "duty_ab", "duty_ba")}
        return {"cut": float(self.cut), "extra_db": self.extra_db, "pulses": pulses,
                "cut_pulses": w["cut_pulses"], "noise_photons_mean": mean["noise"],
                "duty_ab_mean": mean["duty_ab"], "duty_ba_mean": mean["duty_ba"],
                "noise_photons_now": self.noise_photons()}


def raman_source(config: Raman | None, length_km: float, db_per_km: float,
                 gate_ns: float | None, rate_hz: float, efficiency: float) -> RamanSource | None:
    """The Raman parameters of a link, or None without a ``raman`` table."""
    if config is None:
        return None
    gate_s = gate_ns * 1e-9 if gate_ns is not None else 1.0 / rate_hz
    pump_db = db_per_km if config.db_per_km is None else config.db_per_km
    return RamanSource(config, length_km, pump_db, gate_s, efficiency)


class LinkStates:
    """Every link's ``LinkState`` by name, shared by the runtimes of that link (photon,
    heralded, flight). A fault or traffic report for a link no runtime has asked about yet
    creates its state, so a runtime that asks later sees it (the daemon only hears about the
    run's own links: the orchestrator checks fault targets, the ACL limits traffic to relays).
    """

    def __init__(self) -> None:
        self.links: dict[str, LinkState] = {}
        self.ignored = 0  # traffic reports with a window that is not a finite number

    def add(self, name: str, source: RamanSource | None = None) -> LinkState:
        """The state of ``name`` (created if new), with ``source`` as its Raman parameters
        unless it has some already."""
        state = self.links.get(name)
        if state is None:
            state = self.links[name] = LinkState(name, source)
        elif state.raman is None and source is not None:
            state.raman = source
        return state

    def get(self, name: str) -> LinkState:
        """The state of ``name`` (a fresh one, never cut, for a link not seen before)."""
        return self.add(name)

    def control(self, name: str, message: LinkControl) -> str | None:
        return self.add(name).control(message)

    def traffic(self, name: str, report: TrafficReport) -> None:
        if math.isfinite(report.window_s):
            self.add(name).traffic(report)
        else:
            self.ignored += 1

    def report(self) -> dict[str, dict[str, float]]:
        return {name: state.report() for name, state in self.links.items()}
