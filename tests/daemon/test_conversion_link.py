"""Heralded link with a frequency-conversion stage, through the daemon over real TCP: at two
distances the herald rate (emission gaps) and the delivered fidelity (Pauli correlations)
match ``physics.conversion`` within 4 sigma of the sample, and differ from the noiseless link."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from emulator.child_config import DaemonConfig, DaemonEntanglementLink
from emulator.daemon import protocol as p
from emulator.daemon.server import serve
from emulator.physics import conversion as qfc
from emulator.scenario import FrequencyConversion, LinkEntanglement, NodeMemory
from nodes.daemon_client import open_daemon
from tests.daemon.test_entanglement_server import collect

TOKENS = {"alice": "tok-a", "bob": "tok-b"}
F0 = 0.95
N = 3000  # pairs per distance, a third per basis


def config(length_km: float) -> DaemonConfig:
    """Noise strong enough to be seen: r g / eta_c = 0.1 (w ~ 0.83 near the nodes)."""
    memory = NodeMemory(slots=4096)
    ent = LinkEntanglement(
        attempt_rate_hz=4e5, source_fidelity=F0, detector_efficiency=0.9, wavelength_nm=854,
        fibre_db_per_km={"854": 3.0, "1310": 0.33},
        conversion=FrequencyConversion(efficiency=0.3, noise_rate_hz=3e4, gate_s=1e-6))
    link = DaemonEntanglementLink("ab", "alice", "bob", length_km, ent)
    return DaemonConfig("test", time.monotonic(), 1.0, 5, dict(TOKENS), [],
                        memories={"alice": memory, "bob": memory}, entanglement_links=[link])


@pytest.mark.parametrize("length_km", [5.0, 25.0])
async def test_converted_heralds_rate_and_fidelity(nursery, length_km: float) -> None:
    cfg = config(length_km)
    e = cfg.entanglement_links[0].entanglement
    model = qfc.link_heralding(length_km, e)
    f_model = model.fidelity(F0)
    daemon = await nursery.start(serve, cfg)
    async with (open_daemon("127.0.0.1", daemon.port, "alice", "tok-a") as alice,
                open_daemon("127.0.0.1", daemon.port, "bob", "tok-b") as bob):
        started = await alice.request(p.EntangleStart, link="ab", max_pending=N)
        assert started.p_success == pytest.approx(model.p_herald)
        pairs_a, pairs_b = await collect(alice, N, 30.0), await collect(bob, N, 30.0)
        await alice.request(p.EntangleStop, link="ab")
        assert [x.pair for x in pairs_a] == [x.pair for x in pairs_b]
        gaps = np.diff([x.t_stored for x in pairs_a]) * e.attempt_rate_hz
        p_h = model.p_herald
        assert abs(gaps.mean() - 1 / p_h) < 4 * math.sqrt((1 - p_h) / p_h**2 / gaps.size)
        # F = (1 + <ZZ> + <XX> - <YY>) / 4 for the Phi+ Werner family; var from the binomials
        f_hat, var = 0.25, 0.0
        for k, (basis, sign) in enumerate((("Z", 1), ("X", 1), ("Y", -1))):
            idx = range(k, N, 3)
            ma = await alice.request(p.QubitMeasure, bases=[basis],
                                     qubits=[p.QubitRef("alice", pairs_a[i].slot) for i in idx])
            mb = await bob.request(p.QubitMeasure, bases=[basis],
                                   qubits=[p.QubitRef("bob", pairs_b[i].slot) for i in idx])
            agree = np.frombuffer(ma.outcomes, np.uint8) == np.frombuffer(mb.outcomes, np.uint8)
            q = float(agree.mean())
            f_hat += sign * (2 * q - 1) / 4
            var += q * (1 - q) / agree.size / 4
    sigma = math.sqrt(var)
    assert abs(f_hat - f_model) < 4 * sigma
    assert F0 - f_model > 4 * sigma  # the noise heralds are seen, not just allowed
