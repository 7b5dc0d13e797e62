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

Each change is kept with its emulated time (``Setting``): a runtime that samples pulses late
(catching up with the clock) asks ``settings(t0, t1)`` for what held while those photons
crossed, so a cut lasts exactly as long for them whatever the daemon's lag.
``pulse_weighted`` accumulates what a runtime actually applied (per pulse), so the daemon can
report the mean noise and duty each link saw: the orchestrator's QBER model uses it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

from emulator.physics import raman
from emulator.scenario import Raman
from emulator.telemetry import LinkControl, TrafficReport

HISTORY = 4096  # settings kept per link: ~17 min of 0.25 s traffic windows for a late runtime


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


@dataclass(frozen=True)
class Setting:
    """What a link's quantum plane is from emulated time ``t`` on (until the next setting)."""

    t: float
    cut: bool = False
    extra_db: float = 0.0
    duty_ab: float = 0.0
    duty_ba: float = 0.0

    @property
    def factor(self) -> float:
        """0 while cut, else the degrade's 10^(-extra_db/10)."""
        return 0.0 if self.cut else 10.0 ** (-self.extra_db / 10.0)


@dataclass
class LinkState:
    """Faults and measured classical load of one link, with their history in emulated time,
    so a runtime that samples late (catching up) applies what held when its photons crossed.
    ``now`` arguments are emulated seconds; without one a change holds from the start."""

    name: str
    raman: RamanSource | None = None
    history: deque[Setting] = field(default_factory=lambda: deque([Setting(-math.inf)],
                                                                  maxlen=HISTORY))
    weighted: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("pulses", "noise", "duty_ab", "duty_ba", "cut_pulses", "degraded_pulses"), 0.0))

    @property
    def now(self) -> Setting:
        return self.history[-1]

    @property
    def cut(self) -> bool:
        return self.now.cut

    @property
    def extra_db(self) -> float:
        return self.now.extra_db

    @property
    def duty_ab(self) -> float:
        return self.now.duty_ab

    @property
    def duty_ba(self) -> float:
        return self.now.duty_ba

    def transmittance_factor(self) -> float:
        """0 while the quantum plane is cut, else the degrade's 10^(-extra_db/10)."""
        return self.now.factor

    def noise_photons(self, efficiency: float | None = None,
                      setting: Setting | None = None) -> float:
        """Raman photons per gate now, or under ``setting`` (0 without a ``raman`` config)."""
        if self.raman is None:
            return 0.0
        setting = setting or self.now
        return self.raman.photons(setting.duty_ab, setting.duty_ba, efficiency)

    def depolarising_probability(self) -> float:
        """Depolarising probability of a payload at the fibre's output (detector-less)."""
        return float(raman.depolarising_probability(self.noise_photons(efficiency=1.0)))

    def settings(self, t0: float, t1: float) -> list[Setting]:
        """The settings that hold during [t0, t1), in order: the one in force at t0, then each
        change before t1 (never empty)."""
        out: list[Setting] = []
        for setting in reversed(self.history):
            if setting.t <= t0:
                out.append(setting)
                break
            if setting.t < t1:
                out.append(setting)
        return out[::-1] or [self.history[0]]

    def at(self, t: float) -> Setting:
        """The setting in force at emulated time ``t``."""
        return self.settings(t, t)[0]

    def pulse_weighted(self, pulses: int, setting: Setting | None = None) -> None:
        """Record that ``pulses`` were sampled under ``setting`` (default: the current one)."""
        setting = setting or self.now
        w = self.weighted
        w["pulses"] += pulses
        w["noise"] += pulses * self.noise_photons(setting=setting)
        w["duty_ab"] += pulses * setting.duty_ab
        w["duty_ba"] += pulses * setting.duty_ba
        w["cut_pulses"] += pulses if setting.cut else 0
        w["degraded_pulses"] += pulses if setting.extra_db > 0 and not setting.cut else 0

    def _change(self, now: float, **changes: float | bool) -> None:
        t = max(now, self.now.t)  # a change never goes back before the last one
        self.history.append(replace(self.now, t=t, **changes))

    def control(self, message: LinkControl, now: float = -math.inf) -> str | None:
        """Apply a fault to the quantum plane at ``now``; its effect, or None if it has none
        here."""
        if message.plane == "classical" or message.action == "corrupt":
            return None
        if message.action == "cut":
            self._change(now, cut=True)
            return "quantum transmittance 0"
        if message.action == "restore":
            was_cut = self.cut
            self._change(now, cut=False)
            if not was_cut:
                return "quantum plane was not cut"
            return f"quantum transmittance restored (extra {self.extra_db:g} dB)"
        self._change(now, extra_db=message.db)
        return f"quantum extra attenuation {message.db:g} dB"

    def traffic(self, report: TrafficReport, now: float = -math.inf) -> None:
        """New duty cycles from ``now`` on, from a relay's bytes per direction over its last
        window (the load is known only once the window is over: the noise lags it by one)."""
        if self.raman is None or report.window_s <= 0:
            return
        rate = self.raman.config.line_rate_mbps * 1e6
        self._change(now, duty_ab=float(raman.duty_cycle(report.bytes_ab, report.window_s, rate)),
                     duty_ba=float(raman.duty_cycle(report.bytes_ba, report.window_s, rate)))

    def report(self) -> dict[str, float]:
        """Mean noise and duty over the pulses sampled so far, and the fault state now."""
        w = self.weighted
        pulses = w["pulses"]
        mean = {k: w[k] / pulses if pulses else 0.0 for k in ("noise", "duty_ab", "duty_ba")}
        return {"cut": float(self.cut), "extra_db": self.extra_db, "pulses": pulses,
                "cut_pulses": w["cut_pulses"], "degraded_pulses": w["degraded_pulses"],
                "noise_photons_mean": mean["noise"],
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

    def control(self, name: str, message: LinkControl, now: float) -> str | None:
        return self.add(name).control(message, now)

    def traffic(self, name: str, report: TrafficReport, now: float) -> None:
        if math.isfinite(report.window_s):
            self.add(name).traffic(report, now)
        else:
            self.ignored += 1

    def report(self) -> dict[str, dict[str, float]]:
        return {name: state.report() for name, state in self.links.items()}
