"""Quantum teleportation through a noisy resource pair."""

from __future__ import annotations


def average_fidelity(resource_fidelity: float) -> float:
    """Haar-averaged fidelity of a qubit teleported with a pair of fidelity F to Phi+ (standard
    protocol, Pauli correction): f = (2F + 1)/3 (Horodecki, Horodecki & Horodecki, PRA 60,
    1888 (1999), f = (F d + 1)/(d + 1) at d = 2). Exact for Bell-diagonal (e.g. Werner) pairs;
    above the classical 2/3 iff F > 1/2."""
    return (2 * resource_fidelity + 1) / 3
