"""Binary entropy against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator.physics.entropy import binary_entropy


def test_binary_entropy_known_values():
    assert binary_entropy(0.5) == pytest.approx(1.0)
    assert binary_entropy(0.0) == 0.0 and binary_entropy(1.0) == 0.0
    p = 0.11
    assert binary_entropy(p) == pytest.approx(-p * math.log2(p) - (1 - p) * math.log2(1 - p))


def test_binary_entropy_is_symmetric_and_vectorised():
    p = np.array([0.01, 0.1, 0.3])
    assert np.allclose(binary_entropy(p), binary_entropy(1 - p))
    assert binary_entropy(-1e-18) == 0.0 and binary_entropy(1 + 1e-18) == 0.0
