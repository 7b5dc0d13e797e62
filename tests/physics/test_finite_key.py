"""Lim et al. (2014) finite-key length: tends to the asymptotic decoy rate, rejects bad input."""

from __future__ import annotations

import itertools
import math

import pytest

from emulator.physics.channels import transmittance
from emulator.physics.decoy import e1_upper, y1_lower
from emulator.physics.detectors import gain, qber
from emulator.physics.entropy import binary_entropy
from emulator.physics.finite_key import finite_key_length


def _expected_counts(n_pulses, mus, probs, p_basis, eta, y0, e_det):
    det = [n_pulses * p * p_basis**2 * float(gain(m, eta, y0)) for m, p in zip(mus, probs)]
    err = [d * float(qber(m, eta, y0, e_det)) for d, m in zip(det, mus)]
    return det, err


def test_finite_key_tends_to_asymptotic_rate():
    mus, probs, p_basis = (0.5, 0.1, 0.0), (0.7, 0.2, 0.1), 0.5
    eta, y0, e_det, f = 0.1 * float(transmittance(25, 0.2)), 1e-5, 0.01, 1.1
    # asymptotic limit of Lim14 with mu3 = 0 equals the Ma05 vacuum + weak bounds:
    # per pulse p^2 [tau0 Y0 + tau1 Y1_L (1 - h(e1_U))] - leak_EC per pulse
    q = {m: float(gain(m, eta, y0)) for m in mus}
    y1_l = float(y1_lower(0.5, 0.1, q[0.5], q[0.1], y0))
    e1_u = float(e1_upper(0.1, q[0.1], float(qber(0.1, eta, y0, e_det)), y1_l, y0))
    tau0 = sum(p * math.exp(-m) for m, p in zip(mus, probs))
    tau1 = sum(p * math.exp(-m) * m for m, p in zip(mus, probs))
    det1, err1 = _expected_counts(1.0, mus, probs, p_basis, eta, y0, e_det)
    leak_per_pulse = f * sum(det1) * float(binary_entropy(sum(err1) / sum(det1)))
    asymptotic = p_basis**2 * (tau0 * y0 + tau1 * y1_l * (1 - float(binary_entropy(e1_u))))
    asymptotic -= leak_per_pulse
    assert asymptotic > 0
    per_pulse = []
    for n_pulses in (1e9, 1e10, 1e11, 1e12, 1e13, 1e15):
        det, err = _expected_counts(n_pulses, mus, probs, p_basis, eta, y0, e_det)
        res = finite_key_length(
            mus, probs, tuple(det), tuple(det), tuple(err), leak_per_pulse * n_pulses
        )
        per_pulse.append(res.length / n_pulses)
    assert all(b >= a for a, b in itertools.pairwise(per_pulse))
    assert all(r <= asymptotic * (1 + 1e-9) for r in per_pulse)
    assert per_pulse[-1] == pytest.approx(asymptotic, rel=0.01)
    assert per_pulse[0] < 0.9 * asymptotic  # finite-size cost is visible at 1e9 pulses


def test_finite_key_rejects_bad_intensities():
    with pytest.raises(ValueError):
        finite_key_length((0.1, 0.5, 0.0), (0.5, 0.3, 0.2), (1, 1, 1), (1, 1, 1), (0, 0, 0), 0)
