"""Fibre transmittance and delay against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from emulator.physics import channels


def test_transmittance_decibel_values():
    assert float(channels.transmittance(50.0, 0.2)) == pytest.approx(0.1)  # 10 dB
    assert float(channels.transmittance(15.0, 0.2)) == pytest.approx(0.501187, rel=1e-5)  # 3 dB
    assert float(channels.transmittance(0.0, 0.2)) == 1.0
    assert float(channels.transmittance(100.0, 0.0)) == 1.0


def test_transmittance_is_vectorised_and_multiplicative():
    km = np.array([0.0, 10.0, 20.0, 40.0])
    t = channels.transmittance(km, 0.21)
    assert t.shape == km.shape
    assert t[2] == pytest.approx(t[1] ** 2) and t[3] == pytest.approx(t[2] ** 2)


def test_fibre_delay():
    assert float(channels.fibre_delay(100.0)) == pytest.approx(4.9e-4)
    assert channels.FIBRE_GROUP_DELAY_S_PER_KM == pytest.approx(1 / 2.04e5, rel=0.01)
