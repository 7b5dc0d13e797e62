"""result.json's ``clocks`` entry of one ``clocks.compare`` app, with the orchestrator's model.

The nodes report what they measured (n0 the entangled parities, every node its own Ramsey
outcomes). Here: the unentangled estimate of D = sum s_i delta_i from the nodes' estimates,
the true D from the scenario's ``[nodes.clock]`` and the model standard deviations
(``physics/clocks.py``): entangled 1/(sqrt M 2 pi T), unentangled sqrt(N) times that.
"""

from __future__ import annotations

import math
from typing import Any

from emulator.physics import clocks
from emulator.results import print_rows


def _detuning(scenario: Any, name: str) -> float:
    for n in scenario.nodes:
        if n.name == name:
            return n.clock.detuning_hz if n.clock is not None else 0.0
    return 0.0


def _pair_contrast(scenario: Any, app: Any) -> float:
    """Parity contrast of the fused chain: prod over its Werner pairs of (4F - 1)/3."""
    c = 1.0
    for a, b in zip(app.nodes, app.nodes[1:]):
        c *= (4 * scenario.link_between(a, b).entanglement.source_fidelity - 1) / 3
    return c


def _model(d: float, t: float, contrast: float) -> float:
    """What the arcsin estimator converges to: arcsin(C sin(2 pi T D)) / (2 pi T)."""
    return clocks.phase_estimate(contrast * math.sin(clocks.TWO_PI * t * d)) / (clocks.TWO_PI * t)


def merge(scenario: Any, app: Any, entries: list[dict]) -> list[dict]:
    if not entries:
        return []
    by_node = {e.get("node"): e for e in entries}
    signs, n, t = app.sign_list(), len(app.nodes), app.interrogation_s
    d_true = sum(s * _detuning(scenario, x) for s, x in zip(signs, app.nodes))
    out: dict = {"name": "-".join(app.nodes), "nodes": list(app.nodes), "signs": signs,
                 "detuning_hz": {x: _detuning(scenario, x) for x in app.nodes},
                 "difference_true_hz": d_true, "interrogation_s": t,
                 "pairs_per_state": clocks.pairs_per_state(n),
                 "pairs_dropped": sum(e.get("pairs_dropped", 0) for e in entries),
                 "remote_errors": sum(e.get("remote_errors", 0) for e in entries)}
    report = by_node.get(app.nodes[0], {})
    ent = dict(report.get("entangled") or {})
    if ent.get("rounds"):
        m, tau = ent["rounds"], ent["interrogation_s"]  # tau: n0's measured mean, >= T
        ent["pairs"] = m * clocks.pairs_per_state(n)
        ent["sigma_model_hz"] = math.sqrt(clocks.entangled_variance(m, tau, n))
        ent["estimate_model_hz"] = _model(d_true, tau, _pair_contrast(scenario, app))
        ent["checkpoints"] = [
            {**c, "pairs": c["rounds"] * clocks.pairs_per_state(n),
             "sigma_model_hz": math.sqrt(clocks.entangled_variance(c["rounds"],
                                                                   c["interrogation_s"], n))}
            for c in report.get("entangled_checkpoints", []) if c.get("rounds")]
    out["entangled"] = ent
    local = [by_node.get(x, {}).get("local") or {} for x in app.nodes]
    if all(x.get("estimate_hz") is not None for x in local):
        m = min(x["rounds"] for x in local)
        blocks = [x.get("sigma_blocks_hz") for x in local]
        out["unentangled"] = {
            "rounds": m, "qubits": sum(x["rounds"] for x in local),
            "per_node_hz": {name: x["estimate_hz"] for name, x in zip(app.nodes, local)},
            "interrogation_s": {name: x["interrogation_s"] for name, x in zip(app.nodes, local)},
            "per_node_rounds": {name: x["rounds"] for name, x in zip(app.nodes, local)},
            "estimate_hz": sum(s * x["estimate_hz"] for s, x in zip(signs, local)),
            "sigma_hz": math.sqrt(sum(x["sigma_hz"] ** 2 for x in local)),
            "sigma_blocks_hz": (math.sqrt(sum(b * b for b in blocks))
                                if all(b is not None for b in blocks) else None),
            "sigma_model_hz": math.sqrt(sum(
                clocks.entangled_variance(x["rounds"], x["interrogation_s"], 1) for x in local)),
            "estimate_model_hz": sum(s * _model(_detuning(scenario, x), t, 1.0)
                                     for s, x in zip(signs, app.nodes))}
    else:
        out["unentangled"] = {}
    e_sig, u_sig = ent.get("sigma_hz"), out["unentangled"].get("sigma_hz")
    out["advantage_model"] = math.sqrt(n)
    out["advantage"] = u_sig / e_sig if e_sig and u_sig else None
    eb, ub = ent.get("sigma_blocks_hz"), out["unentangled"].get("sigma_blocks_hz")
    out["advantage_blocks"] = ub / eb if eb and ub else None
    return [out]


def print_summary(console: Any, entry: dict) -> None:
    ent, loc = entry.get("entangled") or {}, entry.get("unentangled") or {}
    rows = {"D true (Hz)": entry.get("difference_true_hz"),
            "entangled rounds": ent.get("rounds"), "entangled D (Hz)": ent.get("estimate_hz"),
            "  sigma (Hz)": ent.get("sigma_hz"), "  sigma from blocks (Hz)":
            ent.get("sigma_blocks_hz"), "unentangled D (Hz)": loc.get("estimate_hz"),
            "  sigma (Hz) ": loc.get("sigma_hz"), "  sigma from blocks (Hz) ":
            loc.get("sigma_blocks_hz"), "advantage (model sqrt N)": entry.get("advantage_model"),
            "advantage (blocks)": entry.get("advantage_blocks")}
    flat = {k: v for k, v in rows.items() if v is not None}
    print_rows(console, f"clocks {entry.get('name')}", flat,
               [(k, k, ",d" if isinstance(v, int) else ".4g") for k, v in flat.items()])
