"""The orchestrator's prediction for a ``teleport`` report (never run in a node).

A Werner pair of the link's source fidelity ``F`` dephased by ``t_a/T2_a + t_b/T2_b`` (the
storage times both ends measured, ``storage_s``) teleports a Haar-random input with average
fidelity ``(2F + 1)/3`` (Horodecki et al., PRA 60, 1888 (1999)); so the model is given for
``state = "random"`` only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emulator.physics import conversion, memories, teleportation
from nodes.entanglement.pairs.model import decays


def predict(scenario: Any, app: Any, entry: dict) -> dict:
    """``fidelity_model`` of the report ``entry`` (None for named inputs or no sample)."""
    storage = entry.get("storage_s") or {}
    if app.state != "random" or not storage.get("sample"):
        return {"fidelity_model": None}
    link = scenario.link_between(app.a, app.b)
    f_link = conversion.link_heralding(link.length_km, link.entanglement).fidelity(
        link.entanglement.source_fidelity)  # as delivered (frequency-conversion noise heralds)
    pair_f = [memories.dephased_werner(f_link, d) for d in decays(scenario, storage)]
    return {"fidelity_model": float(np.mean([teleportation.average_fidelity(f) for f in pair_f]))}
