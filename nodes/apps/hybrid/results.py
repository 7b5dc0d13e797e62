"""result.json ``hybrid``: one entry per ``hybrid.send`` flow, its ends' counts and estimates
beside the model of the paths its packets took (``emulator.hybrid_config.flow_mixture`` over
the sender's route changes and the scenario's cuts, computed here in the orchestrator, never
by a node). ``router_measurements`` comes from the
daemon's counts (``emulator.hybrid_config.daemon_counts``), not from the routers' word.
"""

from __future__ import annotations

from typing import Any

import msgspec

from emulator.hybrid_config import NoFlightFibre, cut_windows, flow_mixture
from emulator.results import print_rows
from nodes.apps.hybrid.spec import HybridSendApp

FIELDS = ("src", "dst", "flow", "sent", "delivered", "lost_in_fibre", "late", "dropped_header",
          "unseen", "fidelity_mean", "fidelity_stderr", "fidelity_model", "path", "paths",
          "router_measurements")
MODEL_FIELDS = ("delivered", "lost_in_fibre", "late", "lost_on_cut", "delivered_se",
                "lost_in_fibre_se", "late_se", "ambiguous")


def merge(scenario: Any, app: HybridSendApp, entries: list[dict]) -> list[dict]:
    """Sender, destination and routers joined; the model of the paths the sender's route took,
    packet by packet (none, and ``model_note`` saying why, without a path, a packet sent, or
    flight fibre all along)."""
    src = next((e for e in entries if e.get("role") == "src"), {})
    dst = next((e for e in entries if e.get("role") == "dst"), {})
    routers = {e["node"]: e for e in entries if e.get("section") == "router"}
    out: dict = {"name": f"{app.src}->{app.dst}:{app.flow}", "src": app.src, "dst": app.dst,
                 "flow": app.flow, "payload": app.payload,
                 "sent": src.get("sent"), "path": src.get("path"), "paths": src.get("paths"),
                 "path_at_end": src.get("path_at_end")}
    for key in ("delivered", "lost_in_fibre", "late", "delivered_by_link"):
        out[key] = dst.get(key)
    counts = [out[k] for k in ("sent", "delivered", "lost_in_fibre", "late")]
    out["unseen"] = (counts[0] - sum(counts[1:])) if None not in counts else None
    on_paths = {n for _, path in out["paths"] or [] for n in path[1:]}
    drops = [sum(v for k, v in e.get("counters", {}).items() if k.startswith("dropped_"))
             for node, e in routers.items() if node in on_paths]
    drops.append(sum(v for k, v in dst.get("counters", {}).items() if k.startswith("dropped_")))
    out["dropped_header"] = sum(drops) if dst else None
    out["fidelity_mean"] = dst.get("fidelity_mean")
    out["fidelity_stderr"] = dst.get("fidelity_stderr")
    out["fidelity_mean_src"] = src.get("fidelity_mean")
    out["matched"] = dst.get("matched")
    out["matched_per_basis"] = dst.get("matched_per_basis")  # Z, X, Y (pair payloads)
    out["router_measurements"] = None  # filled from the daemon's report
    out["fidelity_model"], out["model_note"] = None, None
    if not out["paths"]:
        out["model_note"] = "the sender recorded no path"
    elif not src.get("send_times"):
        out["model_note"] = "nothing was sent"
    else:
        # a router's latency depends on the flow: its first router gets the header after the
        # payload, a later one ahead of it (docs/scenarios.md, mesh-16)
        latencies = {node: e.get("decision_us_by_flow", {}).get(str(app.flow), [])
                     for node, e in routers.items()}
        latencies[app.dst] = dst.get("decision_us", [])  # its own delay line's stores
        cuts = cut_windows(scenario, src.get("t_start", 0.0))
        try:
            model = flow_mixture(scenario, out["paths"], src["send_times"], latencies, cuts)
        except NoFlightFibre as exc:  # routed over a classical-only link: nothing to model
            out["model_note"] = str(exc)
        else:
            pair = app.payload == "pair"
            out["fidelity_model"] = model.pair_fidelity if pair else model.fidelity
            out["fidelity_model_spread"] = (model.pair_fidelity_spread if pair
                                            else model.fidelity_spread)
            out["model"] = {k: getattr(model, k) for k in MODEL_FIELDS}
            out["model"]["segments"] = [msgspec.to_builtins(s) for s in model.segments]
    # over_budget: the router's latency samples above its budget; each was refused late by
    # the daemon, which judges the same interval, so never more than ``late``
    budgets = {n.name: n.hybrid.switch_budget_us for n in scenario.nodes if n.hybrid is not None}
    out["routers"] = [{"node": node, "switches": e.get("counters", {}).get("hybrid_switched", 0),
                       "late": e.get("counters", {}).get("hybrid_late", 0),
                       "over_budget": sum(x > budgets.get(node, 0.0)
                                          for x in e.get("decision_us", [])),
                       "decision_us_median": _median(e.get("decision_us", []))}
                      for node, e in sorted(routers.items())]
    return [out]


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def print_summary(console: Any, entry: dict) -> None:
    rows = [("sent", "sent", ",d"), ("delivered", "delivered", ",d"),
            ("lost in fibre", "lost_in_fibre", ",d"), ("late", "late", ",d"),
            ("dropped header", "dropped_header", ",d"), ("unseen", "unseen", ",d"),
            ("fidelity (estimated)", "fidelity_mean", ".4f"),
            ("  standard error", "fidelity_stderr", ".4f"),
            ("fidelity (model)", "fidelity_model", ".4f"), ("  no model", "model_note", ""),
            ("router measurements", "router_measurements", ",d"), ("path", "path", "")]
    print_rows(console, f"hybrid flow {entry.get('flow')} {entry.get('src')}->"
                        f"{entry.get('dst')}", entry, rows)
