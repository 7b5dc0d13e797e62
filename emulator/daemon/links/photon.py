"""Photon link runtime: a WCP source at ``a`` pulsing at ``rate_hz``, detectors at ``b``.

One task per running source samples the receiver's clicks frame by frame in emulated time
(``physics.detection.detect_frame``) and pushes ``Detections`` to ``b`` only (information separation, DESIGN
§4), buffering them until ``b`` opens its detector. When processing falls behind the clock,
every frame already due is sampled in one call (cost follows detections, not frames), so a
tiny ``frame_ms`` costs lag, reported in ``Stats``, never a stall.

Each frame asks the link's ``traffic.LinkState`` for the quantum plane's faults (a cut makes the
transmittance 0, a degrade adds dB) and for the Raman noise of the classical traffic measured
on the same fibre, which joins the dark counts (``physics.raman.effective_dark_count``).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import trio

from emulator.child_config import DaemonLink
from emulator.daemon import protocol as p
from emulator.daemon.links import LinkHost, LinkRuntime, Reply, name_word, not_allowed
from emulator.daemon.session import Connection
from emulator.daemon.traffic import Setting, raman_source
from emulator.physics import channels, detection, detector_effects, detectors, raman, sources
from emulator.prf import intensity_thresholds

log = logging.getLogger("qnet.daemon")

LAG_WARNING_S = 0.1  # log when frame processing falls this far behind (doubling thereafter)
MAX_RECORDS_PER_MESSAGE = 400_000  # 10 bytes each: keeps a Detections frame well under MAX_FRAME
MAX_BACKLOG_RECORDS = 4_000_000  # detections buffered for a receiver that has not opened yet
SCHEDULE_STEP_S = 1.0  # longest stretch sampled at one transmittance on a time-varying link


@dataclass
class SourceRun:
    """A running source: the sender's PRF key and decoy settings, and its stop request."""

    key: bytes
    intensities: list[float]
    probabilities: list[float]
    t_start: float
    owner: Connection
    max_span: int  # most slots sampled in one call when catching up (~ one message of clicks)
    stop_slot: int | None = None
    wake: trio.CancelScope | None = None
    done: trio.Event = field(default_factory=trio.Event)
    photon_numbers: list[np.ndarray] | None = None  # P(n) per intensity; None: Poisson (WCP)


class PhotonLinkRuntime(LinkRuntime):
    """Physics parameters, source state, receiver sink and counters of one photon link."""

    kind = "photon"
    requests = {p.SourceStart: "source_start", p.SourceStop: "source_stop",
                p.DetectorOpen: "detector_open"}

    def __init__(self, link: DaemonLink, host: LinkHost) -> None:
        q = link.quantum
        self.link = link
        self.name = link.name
        self.ends = (link.a, link.b)
        self.host = host
        self.clock = host.clock
        self.rng = host.rng(name_word(link.name))
        self.rate_hz = q.source.rate_hz
        self.slots_per_frame = max(1, round(q.source.rate_hz * q.frame_ms / 1000.0))
        self.delay_s = float(channels.fibre_delay(link.length_km))
        self.eta = float(channels.transmittance(link.length_km, q.attenuation_db_per_km)) * (
            q.detector.efficiency
        )
        self.schedule = q.pass_  # time-varying channel loss (satellite pass), or None
        self.p_dc = q.detector.per_gate_dark_count(q.source.rate_hz)
        self.state = host.link_states.add(link.name, raman_source(
            q.raman, link.length_km, q.attenuation_db_per_km, q.detector.gate_width_ns,
            q.source.rate_hz, q.detector.efficiency))
        self.e_det = q.detector.misalignment
        self.eta_1 = (None if q.detector.efficiency_1 is None else self.eta
                      * q.detector.efficiency_1 / max(q.detector.efficiency, 1e-300))
        self.effects = detector_effects.effects_of(
            q.source.rate_hz, q.detector.dead_time_ns, q.detector.afterpulse_probability,
            q.detector.afterpulse_decay_ns, q.detector.gate_width_ns)
        self.detector_memory = detector_effects.DetectorMemory()
        self.dead_time_blocked = 0
        self.afterpulses = 0
        self.source: SourceRun | None = None
        self.sink: Connection | None = None
        self.backlog: deque[p.Detections] = deque()
        self.backlog_records = 0
        self.lock = trio.Lock()  # orders pushes against DetectorOpen's flush
        self.frames = 0
        self.coalesced = 0  # frames sampled together with an earlier one (catching up)
        self.pulses = 0
        self.detections = 0
        self.lag_worst = 0.0
        self.lag_recent = 0.0
        self.dropped_frames = 0

    def counters(self) -> dict[str, float]:
        return {"frames": self.frames, "coalesced_frames": self.coalesced,
                "pulses": self.pulses, "detections": self.detections,
                "lag_s": self.lag_worst, "lag_recent_s": self.lag_recent,
                "dropped_frames": self.dropped_frames,
                "dead_time_blocked": self.dead_time_blocked, "afterpulses": self.afterpulses}

    def connection_closed(self, conn: Connection) -> None:
        if self.source is not None and self.source.owner is conn:
            self.request_stop()
        if self.sink is conn:
            self.sink = None

    # -- requests -------------------------------------------------------------------------------

    async def source_start(self, conn: Connection, request: p.SourceStart) -> Reply:
        if conn.node != self.link.a:
            return not_allowed(request, f"only {self.link.a!r} may start the source of "
                               f"{self.name!r}")
        if self.source is not None:
            return not_allowed(request, "the source is already running")
        intensities = request.intensities or [self.link.quantum.source.mu]
        probabilities = request.probabilities or ([1.0] if not request.intensities else [])
        try:
            if len(intensities) != len(probabilities) or min(intensities) < 0:
                raise ValueError("intensities must be >= 0, one probability each")
            intensity_thresholds(probabilities)
        except ValueError as exc:
            return p.Error("bad_request", str(exc), id=request.id)
        try:
            photon_numbers = self.photon_numbers(intensities)
        except ValueError as exc:
            return p.Error("bad_request", str(exc), id=request.id)
        y0 = float(detectors.background_yield(self.p_dc))
        if photon_numbers is None:
            p_max = max(float(detectors.gain(mu, self.eta, y0)) for mu in intensities)
        else:
            p_max = max(sources.click_probability(pn, self.eta, y0) for pn in photon_numbers)
        max_span = max(self.slots_per_frame, int(MAX_RECORDS_PER_MESSAGE / max(p_max, 1e-12)))
        if self.schedule is not None:  # the loss must stay ~constant over one sampling call
            max_span = min(max_span, max(self.slots_per_frame,
                                         round(SCHEDULE_STEP_S * self.rate_hz)))
        run = SourceRun(bytes(request.prf_key), list(intensities), list(probabilities),
                        self.clock.now(), conn, min(max_span, 1 << 40),
                        photon_numbers=photon_numbers)
        self.source = run
        self.detector_memory = detector_effects.DetectorMemory()
        self.host.spawn(self.run_source, run)
        return p.SourceStarted(request.id, self.name, run.t_start, self.rate_hz,
                               run.intensities, run.probabilities, self.slots_per_frame)

    async def source_stop(self, conn: Connection, request: p.SourceStop) -> Reply:
        if conn.node != self.link.a:
            return not_allowed(request, f"only {self.link.a!r} may stop the source of "
                               f"{self.name!r}")
        run = self.source
        if run is None:
            return not_allowed(request, "the source is not running")
        self.request_stop()
        await run.done.wait()
        return p.SourceStopped(request.id, self.name, run.stop_slot or 0)

    async def detector_open(self, conn: Connection, request: p.DetectorOpen) -> Reply:
        """Reply, flush what was buffered, then route new frames to ``conn``."""
        if conn.node != self.link.b:
            return not_allowed(request, f"only {self.link.b!r} may open the detector of "
                               f"{self.name!r}")
        async with self.lock:
            await conn.send(p.DetectorOpened(request.id, self.name))
            while self.backlog:
                if not await conn.send(self.backlog[0]):
                    return None
                self.backlog_records -= len(self.backlog.popleft().outcome)
            self.sink = conn
        return None

    # -- the source task ------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop the source after the current slot (no-op if not running or already stopping)."""
        run = self.source
        if run is None or run.stop_slot is not None:
            return
        current = math.floor((self.clock.now() - run.t_start) * self.rate_hz)
        run.stop_slot = max(0, current + 1)
        if run.wake is not None:
            run.wake.cancel()

    async def run_source(self, run: SourceRun) -> None:
        """Sample frames as the emulated clock passes each one's arrival time; when behind,
        every whole frame already due in one call. An exception here ends the daemon."""
        n = self.slots_per_frame
        start = 0
        try:
            while True:
                end = start + n
                if run.stop_slot is not None:
                    end = max(start, min(end, run.stop_slot))
                due = run.t_start + end / self.rate_hz + self.delay_s
                if run.stop_slot is None:
                    with trio.CancelScope() as scope:
                        run.wake = scope
                        await self.clock.sleep_until(due)
                    run.wake = None
                    if scope.cancelled_caught:
                        continue  # stopped while waiting: recompute this frame's end
                else:
                    await self.clock.sleep_until(due)
                now = self.clock.now()
                lag = max(0.0, now - due)
                end = self._catch_up(run, start, end, now)
                found = self.detector_effects(self.sample(run, start, end), end)
                if self.host.taps:
                    self.host.taps.photon_frame(self.name, start, end, found,
                                                run.t_start + end / self.rate_hz + self.delay_s)
                last = run.stop_slot is not None and end >= run.stop_slot
                await self.deliver(detection_messages(self.name, start, end, found, last))
                self.frames += 1
                self.coalesced += max(0, math.ceil((end - start) / n) - 1)
                self.pulses += end - start
                self.detections += found.slot.size
                if lag > LAG_WARNING_S and lag > 2 * self.lag_worst:
                    log.warning("link %s: %.3f s behind the emulated clock (slot %d); "
                                "no pulse is skipped, detections arrive late", self.name,
                                lag, start)
                self.lag_recent = lag
                self.lag_worst = max(self.lag_worst, lag)
                if last:
                    return
                start = end
        finally:
            self.source = None
            run.done.set()

    def sample(self, run: SourceRun, start: int, end: int) -> detection.FrameDetections:
        """Clicks of slots [start, end), split where the link's faults or load changed while
        those photons arrived (``traffic.LinkState.settings``): each part at its own
        transmittance and Raman dark count."""
        arrival = run.t_start + self.delay_s  # of slot 0
        settings = self.state.settings(arrival + start / self.rate_hz,
                                       arrival + end / self.rate_hz)
        bounds = [start] + [min(end, max(start, math.ceil((s.t - arrival) * self.rate_hz)))
                            for s in settings[1:]] + [end]
        parts = [self._sample_part(run, s0, s1, setting)
                 for s0, s1, setting in zip(bounds, bounds[1:], settings) if s1 > s0]
        if len(parts) == 1:
            return parts[0]
        if not parts:  # an empty span (the last call at a stop)
            return self._sample_part(run, start, end, settings[-1])
        return detection.FrameDetections(*(np.concatenate([getattr(f, k) for f in parts])
                                           for k in ("slot", "basis", "outcome")))

    def _sample_part(self, run: SourceRun, start: int, end: int,
                     setting: Setting) -> detection.FrameDetections:
        eta = self.eta_at(run, start, end) * setting.factor
        noise = self.state.noise_photons(setting=setting)
        self.state.pulse_weighted(end - start, setting)
        p_dc = self.p_dc if noise == 0 else float(raman.effective_dark_count(self.p_dc, noise))
        return detection.detect_frame(
            self.rng, run.key, start, end, self.sampled_intensities(run, eta),
            run.probabilities, eta, p_dc, self.e_det, eta_1=self.eta_1_at(eta))

    def photon_numbers(self, intensities: list[float]) -> list[np.ndarray] | None:
        """P(n) of each requested intensity from the link's source (None for a WCP); a table
        source knows only its listed intensities."""
        source = self.link.quantum.source
        if source.kind == "wcp":
            return None
        if source.kind == "table":
            rows = dict(zip(source.intensities, source.photon_number_distributions()))
            if any(mu not in rows for mu in intensities):
                raise ValueError(f"the table source has intensities {source.intensities} only")
            return [rows[mu] for mu in intensities]
        return [sources.distribution(source.kind, mu, source.herald_efficiency,
                                     source.herald_dark_count_probability) for mu in intensities]

    def sampled_intensities(self, run: SourceRun, eta: float) -> list[float]:
        """What the sampler is given: the WCP's mu, or for another source the Poisson mean with
        the same click probability at this eta, -ln(1 - P(>= 1 photon detected)) / eta: the
        sampler depends on mu only through e^{-eta mu}, so clicks follow the source's P(n)."""
        if run.photon_numbers is None:
            return run.intensities
        if eta <= 0.0:
            return [0.0] * len(run.intensities)
        detected = [min(sources.signal_click_probability(pn, eta), 1.0 - 1e-16)
                    for pn in run.photon_numbers]
        return [-math.log1p(-s) / eta for s in detected]

    def eta_1_at(self, eta: float) -> float | None:
        """The outcome-1 detector's total efficiency when it differs (mismatch), else None."""
        if self.eta_1 is None:
            return None
        return self.eta_1 * (eta / self.eta) if self.eta else self.eta_1

    def detector_effects(self, found: detection.FrameDetections,
                         end: int) -> detection.FrameDetections:
        """Dead time and afterpulses of the detector pair on a frame's ideal clicks."""
        found, counts = detector_effects.apply_effects(self.rng, found, end, self.effects,
                                                       self.detector_memory)
        self.dead_time_blocked += counts.blocked
        self.afterpulses += counts.afterpulses
        return found

    def eta_at(self, run: SourceRun, start: int, end: int) -> float:
        """Transmittance for slots [start, end): fixed, or the pass's at their middle time
        (pass time counts from the source's start: the apps', whenever the run began)."""
        if self.schedule is None:
            return self.eta
        return self.eta * float(self.schedule.transmittance(0.5 * (start + end) / self.rate_hz))

    def _catch_up(self, run: SourceRun, start: int, end: int, now: float) -> int:
        """End of the slots to sample now: ``end``, extended by every further whole frame
        whose photons have already arrived at ``now`` (at most ``run.max_span`` slots)."""
        n = self.slots_per_frame
        arrived = math.floor((now - self.delay_s - run.t_start) * self.rate_hz)
        limit = min(arrived, start + run.max_span)
        if limit - end >= n:
            end += (limit - end) // n * n
        if run.stop_slot is not None:
            end = min(end, run.stop_slot)
        return end

    async def deliver(self, messages: list[p.Detections]) -> None:
        async with self.lock:
            for i, message in enumerate(messages):
                sink = self.sink
                if sink is not None and await sink.send(message):
                    continue
                self.sink = None
                for rest in messages[i:]:
                    self._buffer(rest)
                return

    def _buffer(self, message: p.Detections) -> None:
        self.backlog.append(message)
        self.backlog_records += len(message.outcome)
        while self.backlog_records > MAX_BACKLOG_RECORDS and len(self.backlog) > 1:
            dropped = self.backlog.popleft()
            self.backlog_records -= len(dropped.outcome)
            self.dropped_frames += 1
            log.warning("link %s: receiver never opened; dropped detections %d..%d",
                        self.name, dropped.frame_start, dropped.frame_end)


def detection_messages(
    link: str, start: int, end: int, found: detection.FrameDetections, last: bool
) -> list[p.Detections]:
    """One frame as one or more Detections covering [start, end) contiguously."""
    m = found.slot.size
    cuts = list(range(0, m, MAX_RECORDS_PER_MESSAGE))[1:]
    bounds = [0, *cuts, m]
    messages = []
    for j in range(len(bounds) - 1):
        i0, i1 = bounds[j], bounds[j + 1]
        messages.append(p.Detections(
            link=link,
            frame_start=start if j == 0 else int(found.slot[i0]),
            frame_end=end if i1 == m else int(found.slot[i1]),
            slot=found.slot[i0:i1].astype("<u8").tobytes(),
            basis=found.basis[i0:i1].tobytes(),
            outcome=found.outcome[i0:i1].tobytes(),
            last=last and i1 == m,
        ))
    return messages
