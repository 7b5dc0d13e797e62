"""result.json ``hybrid``: one entry per ``hybrid.send`` flow, its ends' counts and estimates
beside the model of the path it took (``physics.flight.flow_model``, computed here in the
orchestrator from the scenario, never by a node). ``router_measurements`` comes from the
daemon's counts (``emulator.hybrid_config.daemon_counts``), not from the routers' word.
"""

from __future__ import annotations

from typing import Any

from emulator.hybrid_config import NoFlightFibre, flow_prediction
from emulator.results import print_rows
from nodes.apps.hybrid.spec import HybridSendApp

FIELDS = ("src", "dst", "flow", "sent", "delivered", "lost_in_fibre", "late", "dropped_header",
          "fidelity_mean", "fidelity_stderr", "fidelity_model", "path", "router_measurements")


def merge(scenario: Any, app: HybridSendApp, entries: list[dict]) -> list[dict]:
    """Sender, destination and routers joined; the model of the sender's path (none, and
    ``model_note`` saying why, without a path, a packet sent, or flight fibre all along)."""
    src = next((e for e in entries if e.get("role") == "src"), {})
    dst = next((e for e in entries if e.get("role") == "dst"), {})
    routers = {e["node"]: e for e in entries if e.get("section") == "router"}
    out: dict = {"name": f"{app.src}->{app.dst}:{app.flow}", "src": app.src, "dst": app.dst,
                 "flow": app.flow, "payload": app.payload,
                 "sent": src.get("sent"), "path": src.get("path"),
                 "path_at_end": src.get("path_at_end")}
    for key in ("delivered", "lost_in_fibre", "late", "delivered_by_link"):
        out[key] = dst.get(key)
    counts = [out[k] for k in ("sent", "delivered", "lost_in_fibre", "late")]
    out["dropped_header"] = (counts[0] - sum(counts[1:])) if None not in counts else None
    out["fidelity_mean"] = dst.get("fidelity_mean")
    out["fidelity_stderr"] = dst.get("fidelity_stderr")
    out["fidelity_mean_src"] = src.get("fidelity_mean")
    out["matched"] = dst.get("matched")
    out["matched_per_basis"] = dst.get("matched_per_basis")  # Z, X, Y (pair payloads)
    out["router_measurements"] = None  # filled from the daemon's report
    out["fidelity_model"], out["model_note"] = None, None
    if not out["path"]:
        out["model_note"] = "the sender recorded no path"
    elif not src.get("send_times"):
        out["model_note"] = "nothing was sent"
    else:
        latencies = {node: e.get("decision_us", []) for node, e in routers.items()}
        latencies[app.dst] = dst.get("decision_us", [])  # its own delay line's stores
        try:
            model = flow_prediction(scenario, out["path"], src["send_times"], latencies)
        except NoFlightFibre as exc:  # routed over a classical-only link: nothing to model
            out["model_note"] = str(exc)
        else:
            pair = app.payload == "pair"
            out["fidelity_model"] = model.pair_fidelity if pair else model.fidelity
            out["fidelity_model_spread"] = (model.pair_fidelity_spread if pair
                                            else model.fidelity_spread)
            out["model"] = {"delivered": model.delivered,
                            "lost_in_fibre": model.lost_in_fibre, "late": model.late}
    out["routers"] = [{"node": node, "switches": e.get("counters", {}).get("hybrid_switched", 0),
                       "late": e.get("counters", {}).get("hybrid_late", 0),
                       "decision_us_median": _median(e.get("decision_us", []))}
                      for node, e in sorted(routers.items())]
    return [out]


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def print_summary(console: Any, entry: dict) -> None:
    rows = [("sent", "sent", ",d"), ("delivered", "delivered", ",d"),
            ("lost in fibre", "lost_in_fibre", ",d"), ("late", "late", ",d"),
            ("dropped header", "dropped_header", ",d"),
            ("fidelity (estimated)", "fidelity_mean", ".4f"),
            ("  standard error", "fidelity_stderr", ".4f"),
            ("fidelity (model)", "fidelity_model", ".4f"), ("  no model", "model_note", ""),
            ("router measurements", "router_measurements", ",d"), ("path", "path", "")]
    print_rows(console, f"hybrid flow {entry.get('flow')} {entry.get('src')}->"
                        f"{entry.get('dst')}", entry, rows)
