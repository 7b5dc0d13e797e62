"""Barrett-Kok heralding probability against the closed form."""

from __future__ import annotations

import pytest

from emulator.physics.heralding import heralding_probability


def test_heralding_probability_closed_form():
    # 10 km at 0.2 dB/km: each arm 1 dB; two arms 2 dB -> 10^-0.2
    assert heralding_probability(10.0, 0.2, 0.9, 0.5) == pytest.approx(0.5 * 0.81 * 10 ** -0.2)
    assert heralding_probability(0.0, 0.2, 1.0, 0.5) == pytest.approx(0.5)
    assert heralding_probability(50.0, 0.2, 1.0, 1.0) == pytest.approx(0.1)


def test_heralding_scales_with_the_whole_length_once():
    """Both photons cross half the fibre: the total loss is that of L, not 2 L."""
    p20 = heralding_probability(20.0, 0.25, 0.8, 0.5)
    p40 = heralding_probability(40.0, 0.25, 0.8, 0.5)
    assert p40 / p20 == pytest.approx(10 ** (-0.25 * 20 / 10))
