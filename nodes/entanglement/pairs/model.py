"""The orchestrator's prediction for an ``entanglement.pairs`` report (never run in a node).

``fidelity_model`` is the Werner chain of the path's link fidelities (Briegel et al. 1998)
with each pair dephased by ``sum_i t_i / T2_i`` over the nodes that stored it: the storage
times ``t_i`` are the ones the ends measured (a uniform subsample, ``storage_s``), the T2s come
from the scenario. With purification, the recurrence on the undecayed chain (memory decay is
not modelled there).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import msgspec
import numpy as np

from emulator.physics import bell_diagonal as bd
from emulator.physics import conversion, memories
from emulator.physics.purification import rounds as purification_rounds
from emulator.scenario import memory_of


def decays(scenario: Any, storage: dict) -> list[float]:
    """``sum_i t_i / T2_i`` of every sampled pair (a node without T2 does not dephase)."""
    t2 = [memory_of(scenario, n).t2_s for n in storage["nodes"]]
    return [sum(t / t2_i for t, t2_i in zip(row, t2, strict=True) if t2_i)
            for row in storage["sample"]]


def predict(scenario: Any, app: Any, entry: dict) -> dict:
    """``fidelity_model`` and ``fidelity_link_chain`` for the report ``entry`` of ``app``
    (a link's fidelity as delivered: with frequency conversion, noise heralds mixed in)."""
    path = [app.a, *app.path, app.b]
    links = [scenario.link_between(u, v) for u, v in pairwise(path)]
    f_chain = bd.werner_chain(conversion.link_heralding(link.length_km, link.entanglement)
                              .fidelity(link.entanglement.source_fidelity) for link in links)
    model = None
    if app.purification != "none":
        _, coeffs = purification_rounds(app.purification, bd.werner_coefficients(f_chain),
                                        app.purification_rounds)
        model = float(coeffs[0]) if entry.get("pairs") else None
    elif entry.get("storage_s", {}).get("sample"):
        model = float(np.mean([memories.dephased_werner(f_chain, d)
                               for d in decays(scenario, entry["storage_s"])]))
    return {"fidelity_model": model, "fidelity_link_chain": f_chain, **link_rates(links)}


def link_rates(links: list) -> dict:
    """One link: its herald rate, and with conversion the rate sending the photons unconverted
    and the crossover length (``physics.conversion``); the measured ``pairs_per_s`` is beside."""
    if len(links) != 1:
        return {}
    link = links[0]
    e = link.entanglement
    out: dict = {"pairs_per_s_model": e.attempt_rate_hz
                 * conversion.link_heralding(link.length_km, e).p_herald}
    if e.conversion is not None:
        direct = msgspec.structs.replace(e, conversion=None)
        out["conversion"] = {
            "true_herald_fraction": conversion.link_heralding(link.length_km, e).true_fraction,
            "pairs_per_s_unconverted_model": e.attempt_rate_hz
            * conversion.link_heralding(link.length_km, direct).p_herald,
            "crossover_km": conversion.link_crossover_km(e)}
    return out
