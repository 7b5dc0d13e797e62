"""The daemon's link state (emulator.daemon.traffic): quantum-plane faults and Raman noise from
measured classical traffic, and what the photon runtime does with them (click rates against
the gain formula with the effective dark count, within 4 binomial sigma)."""

from __future__ import annotations

import math
import time

import numpy as np
import trio

from emulator.child_config import DaemonConfig, DaemonLink
from emulator.daemon import protocol as p
from emulator.daemon.server import _link_message, serve
from emulator.daemon.traffic import LinkState, LinkStates, raman_source
from emulator.physics import channels, raman
from emulator.physics.detectors import background_yield, gain
from emulator.scenario import Detector, QuantumLink, Raman, Source
from emulator.telemetry import Decoded, FaultEffect, LinkControl, TrafficReport
from tests.daemon.test_server import KEY, TOKENS, Peer, detections_for

RAMAN = Raman(launch_power_mw=1.0, rho_per_km_nm=3e-9, filter_nm=0.8, wavelength_nm=1550.0,
              line_rate_mbps=100.0)
LENGTH_KM, RATE_HZ, MU, EFF = 25.0, 1e8, 0.5, 0.1


def state() -> LinkState:
    return LinkState("a-b", raman_source(RAMAN, LENGTH_KM, 0.2, None, RATE_HZ, EFF))


def test_cut_restore_and_degrade_set_the_transmittance_factor() -> None:
    s = state()
    assert s.transmittance_factor() == 1.0
    assert s.control(LinkControl("cut", plane="classical")) is None  # the relay's plane
    assert s.control(LinkControl("cut")) == "quantum transmittance 0"
    assert s.transmittance_factor() == 0.0
    s.control(LinkControl("degrade", plane="quantum", db=3.0))
    assert s.transmittance_factor() == 0.0  # still cut
    assert s.control(LinkControl("restore", plane="quantum")) == (
        "quantum transmittance restored (extra 3 dB)")
    assert s.control(LinkControl("restore")) == "quantum plane was not cut"
    assert math.isclose(s.transmittance_factor(), 10 ** -0.3)
    s.control(LinkControl("degrade", db=0.0))
    assert s.transmittance_factor() == 1.0
    assert s.control(LinkControl("corrupt")) is None


def test_noise_follows_the_duty_cycle_of_each_direction() -> None:
    s = state()
    assert s.noise_photons() == 0.0
    # 1.25 MB a->b and 0.25 MB b->a in 1 s on a 100 Mbit/s line: duty 0.1 and 0.02
    s.traffic(TrafficReport(window_s=1.0, bytes_ab=1_250_000, bytes_ba=250_000))
    assert math.isclose(s.duty_ab, 0.1) and math.isclose(s.duty_ba, 0.02)
    w, gate = 1e-3, 1.0 / RATE_HZ
    by_hand = (0.1 * w * math.exp(-raman.attenuation_per_km(0.2) * LENGTH_KM) * 3e-9 * 0.8
               * LENGTH_KM + 0.02 * w * 3e-9 * 0.8 * -math.expm1(
                   -2 * raman.attenuation_per_km(0.2) * LENGTH_KM)
               / (2 * raman.attenuation_per_km(0.2)))
    photons = by_hand * 1550e-9 / (raman.PLANCK_J_S * raman.LIGHT_SPEED_M_S) * gate * EFF
    assert math.isclose(s.noise_photons(), photons, rel_tol=1e-12)
    assert math.isclose(s.depolarising_probability(), -math.expm1(-photons / EFF / 2))
    s.traffic(TrafficReport(window_s=1.0, bytes_ab=10**9, bytes_ba=0))  # saturates at 1
    assert s.duty_ab == 1.0 and s.duty_ba == 0.0


def test_settings_keep_their_times() -> None:
    s = state()
    s.control(LinkControl("cut"), 1.0)
    s.traffic(TrafficReport(window_s=1.0, bytes_ab=1_250_000, bytes_ba=0), 1.5)
    s.control(LinkControl("restore"), 2.0)
    s.control(LinkControl("degrade", db=1.0), 1.9)  # never before the last change: at 2.0
    assert [x.t for x in s.settings(0.0, 3.0)] == [-math.inf, 1.0, 1.5, 2.0, 2.0]
    assert [x.t for x in s.settings(1.2, 1.5)] == [1.0]
    assert [x.t for x in s.settings(1.5, 1.5)] == [1.5]
    assert s.at(1.7).cut and s.at(1.7).duty_ab == 0.1 and not s.at(0.5).cut
    assert s.at(5.0).factor == 10 ** -0.1 and not s.at(5.0).cut


def test_pulse_weighted_report_and_unknown_links() -> None:
    s = state()
    s.traffic(TrafficReport(window_s=1.0, bytes_ab=1_250_000, bytes_ba=0))
    s.pulse_weighted(300)
    s.traffic(TrafficReport(window_s=1.0, bytes_ab=0, bytes_ba=0))
    s.pulse_weighted(100)
    report = s.report()
    assert math.isclose(report["duty_ab_mean"], 0.075)
    assert report["pulses"] == 400 and report["noise_photons_now"] == 0.0
    states = LinkStates()
    first = states.add("a-b")
    assert states.add("a-b", state().raman) is first and first.raman is not None  # shared
    assert states.add("a-b", None).raman is first.raman  # a runtime without Raman keeps it
    # a fault for a link no runtime has asked about yet waits for it (e.g. a flight fibre)
    assert states.control("x-y", LinkControl("cut"), 1.0) == "quantum transmittance 0"
    assert states.get("x-y").cut and not states.get("a-b").cut
    states.traffic("x-y", TrafficReport(window_s=float("nan"), bytes_ab=1, bytes_ba=1), 2.0)
    assert states.ignored == 1


class Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes, **_) -> None:
        self.published.append((topic, payload))


async def test_mqtt_messages_reach_the_link_state_and_effects_are_published(nursery) -> None:
    daemon = await nursery.start(serve, config(RAMAN))
    mqtt = Recorder()
    await _link_message(daemon, mqtt, Decoded("control", "link", "a-b", LinkControl("cut")))
    await _link_message(daemon, mqtt, Decoded("relay", "traffic", "a-b", TrafficReport(
        window_s=0.5, bytes_ab=625_000, bytes_ba=0)))
    await _link_message(daemon, mqtt, None)
    link = daemon.link_states.get("a-b")
    assert link.cut and math.isclose(link.duty_ab, 0.1)
    (topic, payload), = mqtt.published
    assert topic == "qnet/test/daemon/fault"
    effect = __import__("msgspec").json.decode(payload, type=FaultEffect)
    assert (effect.link, effect.action, effect.effect) == ("a-b", "cut", "quantum transmittance 0")
    assert daemon.report().link_state["a-b"]["cut"] == 1.0


def config(raman_config: Raman | None) -> DaemonConfig:
    quantum = QuantumLink(source=Source(rate_hz=RATE_HZ, mu=MU), frame_ms=10.0,
                          detector=Detector(efficiency=EFF), raman=raman_config)
    link = DaemonLink("a-b", "alice", "bob", LENGTH_KM, quantum)
    return DaemonConfig("test", time.monotonic(), 1.0, 7, dict(TOKENS), [link])


async def run_source(alice: Peer, bob: Peer, seconds: float) -> tuple[int, int]:
    """Let alice's started source run ``seconds`` while bob counts clicks; (pulses, clicks)."""
    stopped, messages = await detections_for(alice, bob, "a-b", seconds)
    return stopped.pulses, sum(len(m.outcome) for m in messages)


async def clicks(nursery, *, duty: float, cut: bool = False) -> tuple[int, int, LinkState]:
    """Run the source ~0.15 s with the given a->b duty cycle; (pulses, clicks, state)."""
    daemon = await nursery.start(serve, config(RAMAN))
    link = daemon.link_states.get("a-b")
    link.traffic(TrafficReport(window_s=1.0, bytes_ab=round(duty * 12_500_000), bytes_ba=0))
    if cut:
        link.control(LinkControl("cut", plane="quantum"))
    alice = await Peer.connect(daemon.port, "alice")
    bob = await Peer.connect(daemon.port, "bob")
    assert isinstance(await bob.ask(p.DetectorOpen(1, "a-b")), p.DetectorOpened)
    assert isinstance(await alice.ask(p.SourceStart(1, "a-b", KEY)), p.SourceStarted)
    pulses, found = await run_source(alice, bob, 0.15)
    return pulses, found, link


def within_4_sigma(pulses: int, found: int, q: float) -> bool:
    return abs(found - pulses * q) <= 4 * math.sqrt(pulses * q * (1 - q))


async def test_photon_clicks_follow_gain_with_raman_dark_counts(nursery) -> None:
    eta = float(channels.transmittance(LENGTH_KM, 0.2)) * EFF
    quiet_q = float(gain(MU, eta, background_yield(1e-6)))
    for duty in (0.0, 0.05):
        pulses, found, link = await clicks(nursery, duty=duty)
        n = link.noise_photons()
        assert (n > 1e-3) == (duty > 0)
        q = float(gain(MU, eta, background_yield(raman.effective_dark_count(1e-6, n))))
        assert pulses > 5e6 and within_4_sigma(pulses, found, q), (duty, found / pulses, q)
        assert math.isclose(link.report()["noise_photons_mean"], n)
        if duty:  # the noise is visible: far beyond 4 sigma of the quiet fibre's gain
            assert not within_4_sigma(pulses, found, quiet_q)


async def test_a_cut_quantum_plane_leaves_only_noise_and_dark_counts(nursery) -> None:
    pulses, found, link = await clicks(nursery, duty=0.05, cut=True)
    y0 = float(background_yield(raman.effective_dark_count(1e-6, link.noise_photons())))
    assert within_4_sigma(pulses, found, y0)
    assert link.report()["cut_pulses"] == link.report()["pulses"] == pulses
    assert np.isfinite(y0)


async def test_a_cut_quantum_plane_stops_heralds_until_restored(nursery) -> None:
    """No pair is emitted while the quantum plane is cut, judged by each pair's emission time
    (on a loaded machine the generator may still be catching up on attempts drawn before)."""
    from tests.daemon.test_entanglement_server import make_config

    daemon = await nursery.start(serve, make_config())
    link = daemon.heralded_links["ab"]
    state = daemon.link_states.get("ab")
    assert state is link.state
    emitted: list[float] = []
    store_pair = link.memories.store_pair

    def recording(node_a, node_b, coeffs, now, owner=None):
        emitted.append(now)
        return store_pair(node_a, node_b, coeffs, now, owner=owner)

    link.memories.store_pair = recording
    alice = await Peer.connect(daemon.port, "alice", "tok-a")
    assert isinstance(await alice.ask(p.EntangleStart(1, "ab")), p.EntangleStarted)
    with trio.fail_after(20):
        while len(emitted) < 50:
            await trio.sleep(0.005)
        t_cut = daemon.clock.now()
        state.control(LinkControl("cut", plane="quantum"), t_cut)
        await trio.sleep(0.1)  # ~2600 heralds expected at 1e5 attempts/s if it were up
        t_restore = daemon.clock.now()
        assert not [t for t in emitted if t_cut <= t < t_restore]
        state.control(LinkControl("restore"), t_restore)
        while sum(t >= t_restore for t in emitted) < 50:
            await trio.sleep(0.005)
    assert link.generated == len(emitted)


def test_the_raman_table_is_validated_with_its_path() -> None:
    from pathlib import Path

    import pytest

    from emulator.scenario import ScenarioError, load_scenario

    quickstart = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.toml"
    sc = load_scenario(quickstart, ["links.0.quantum.raman.line_rate_mbps=100"])
    assert sc.links[0].quantum.raman == Raman(line_rate_mbps=100.0)
    for override, message in [
            ("links.0.quantum.raman.launch_power_mw=0", r"launch_power_mw: Expected `float` > 0"),
            ("links.0.quantum.raman.colour=1", r"^links\[0\]\.quantum\.raman\.colour: unknown key"),
            ("links.0.quantum.raman.db_per_km=-1", r"db_per_km: Expected `float` >= 0")]:
        with pytest.raises(ScenarioError, match=message):
            load_scenario(quickstart, [override])


async def test_a_cut_lasts_exactly_its_emulated_time_for_the_photons(nursery) -> None:
    """Settings carry emulated times: a cut announced for [t+0.05, t+0.1) blinds exactly the
    slots arriving then, however late the source task samples them."""
    daemon = await nursery.start(serve, config(None))
    link = daemon.link_states.get("a-b")
    alice = await Peer.connect(daemon.port, "alice")
    bob = await Peer.connect(daemon.port, "bob")
    assert isinstance(await bob.ask(p.DetectorOpen(1, "a-b")), p.DetectorOpened)
    started = await alice.ask(p.SourceStart(1, "a-b", KEY))
    t = started.t_start + daemon.photon_links["a-b"].delay_s  # arrival of slot 0
    link.control(LinkControl("cut"), t + 0.05)
    link.control(LinkControl("restore"), t + 0.1)
    pulses, found = await run_source(alice, bob, 0.2)
    assert abs(link.report()["cut_pulses"] - 0.05 * RATE_HZ) <= 1
    eta = float(channels.transmittance(LENGTH_KM, 0.2)) * EFF
    q, y0 = float(gain(MU, eta, background_yield(1e-6))), float(background_yield(1e-6))
    dark = link.report()["cut_pulses"]
    expected = q * (pulses - dark) + y0 * dark
    assert abs(found - expected) <= 4 * math.sqrt(q * (pulses - dark) + y0 * dark)
