"""clocks.compare's sans-I/O pieces: wire messages, flips, spin-echo time, Ramsey estimator."""

import math

import numpy as np
import pytest

from nodes.entanglement.clocks import ends
from nodes.errors import MalformedMessage


def test_messages_round_trip_and_bad_bits_are_refused():
    for m in (ends.Start(3, 7, 1, 0.25, 0.2, 0.05), ends.Parity(3, 0), ends.Drop(9), ends.End(4)):
        assert ends.decode(ends.encoder.encode(m)) == m
    with pytest.raises(MalformedMessage):
        ends.decode(ends.encoder.encode(ends.Parity(1, 2)))
    with pytest.raises(MalformedMessage):
        ends.decode(b"\x93\x01\x02")


def test_flips_and_echo():
    assert ends.inner_flips(1, -1) == (1, 1)
    assert ends.last_flip(1, -1) == 0 and ends.last_flip(0, -1) == 1
    # Bell: stored at 1.0, flipped at 1.03, n0 measures at 1.2 (tau = 0.2): the sign -1 end
    # measures at 1.26, and its net time +0.03 - (1.26 - 1.03) = -0.2 = -tau
    pre = ends.held_time(1.0, 1.0, 0, 1.03)
    t = ends.measure_time(0.2, -1, pre, 1.03)
    assert pre == pytest.approx(0.03) and t == pytest.approx(1.26)
    assert pre - (t - 1.03) == pytest.approx(-0.2)
    # GHZ: the half stored at 1.0, the upstream fusion at 1.01, corrected (corr 1) at 1.04:
    # + 0.01 then - 0.03 (the uncorrected branch has it flipped)
    assert ends.held_time(1.0, 1.01, 1, 1.04) == pytest.approx(0.01 - 0.03)
    # sign +1: t = t_last + tau - pre, so pre + (t - t_last) = tau
    assert ends.measure_time(0.2, 1, 0.05, 2.0) == pytest.approx(2.15)


def test_ramsey_estimate_recovers_the_detuning_with_its_sigma():
    rng = np.random.default_rng(5)
    d, t, m = 0.6, 0.1, 3200
    phi = 2 * math.pi * d * t
    bits = rng.random(m) > (1 + math.sin(phi)) / 2  # outcome 0 = +1
    est = ends.RamseyEstimate(m)
    for b in bits:
        est.add(int(b), t)
    s = est.summary()
    assert s["sigma_hz"] == pytest.approx(1 / (math.sqrt(m) * 2 * math.pi * t))
    assert abs(s["estimate_hz"] - d) < 4 * s["sigma_hz"]
    assert s["sigma_blocks_hz"] == pytest.approx(s["sigma_hz"], rel=4 / math.sqrt(2 * 7))
    assert [c["rounds"] for c in est.checkpoints] == [100, 200, 400, 800, 1600, 3200]
