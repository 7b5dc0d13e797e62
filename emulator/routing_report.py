"""result.json ``routing``: failure detection and convergence times, from the run's events.

Each fault that changes the routed plane (a classical cut or restore of a link, a node crash,
a crashed node's restart) is matched with the first routing event that noticed it: a
``neighbour_down`` (``neighbour_up`` for a restore or restart) at an end of the link, or at a
neighbour of the node. ``detection_ms`` runs from the fault to that event. Convergence is the
last ``route_changed`` of the burst that follows (changes at any node, each within
``dead_interval_s`` of the previous one, before the next fault), measured from the detection.
Nodes report the time their core acted (``at``); computed here, never by a node. A fault's
``at_s`` counts from the run's ``start`` event, as in result.json ``faults``.
"""

from __future__ import annotations

import statistics
from typing import Any

from emulator.scenario import Scenario, routing_of

DETECTED_BY = {"cut": "neighbour_down", "restore": "neighbour_up", "crash": "neighbour_down",
               "restart": "neighbour_up"}


def _at(event: dict) -> float:
    at = event.get("at")
    return float(at) if isinstance(at, int | float) else float(event.get("t_emu", 0.0))


def _faults(events: list[dict]) -> list[dict]:
    """The faults that touch routing, as {at, action, target, link or node}, in time order."""
    out = []
    for e in events:
        if e.get("kind") == "fault" and e.get("action") in ("cut", "restore") and e.get("link"):
            if e.get("plane", "both") != "quantum":
                out.append({"at": _at(e), "action": e["action"], "link": e["link"]})
        elif e.get("kind") == "fault" and e.get("action") == "crash" and e.get("pid"):
            out.append({"at": _at(e), "action": "crash", "node": e["node"]})
        elif e.get("kind") == "node_restarted":
            out.append({"at": _at(e), "action": "restart", "node": e["node"]})
    for fault in out:
        fault["target_key"] = fault.get("link") or fault.get("node")
    return sorted(out, key=lambda f: f["at"])


def _noticed(fault: dict, event: dict, scenario: Scenario) -> bool:
    if event.get("kind") != DETECTED_BY[fault["action"]] or _at(event) < fault["at"]:
        return False
    if "link" in fault:
        link = scenario.link(fault["link"])
        return event.get("link") == link.id and event.get("node") in (link.a, link.b)
    return event.get("neighbour") == fault["node"]


def routing_section(scenario: Scenario, events: list[dict]) -> dict:
    """``{"routing": {...}}`` for a run that routes, else ``{}``."""
    routing = routing_of(scenario)
    if routing is None:
        return {}
    changes = sorted(_at(e) for e in events
                     if e.get("kind") == "route_changed" and e.get("changed"))
    faults = _faults(events)
    per_fault = []
    ordered = sorted(events, key=_at)
    t_start = next((e["t_emu"] for e in events if e.get("kind") == "start"), 0.0)
    for fault in faults:
        entry: dict[str, Any] = {"at_s": round(fault["at"] - t_start, 6),
                                 "action": fault["action"],
                                 "target": fault.get("link") or fault.get("node"),
                                 "detection_ms": None, "convergence_ms": None}
        later = [f for f in faults if f["at"] > fault["at"] and f["target_key"] == fault["target_key"]]
        until_same = later[0]["at"] if later else float("inf")
        detected = next((e for e in ordered if _noticed(fault, e, scenario)), None)
        if detected is not None and _at(detected) < until_same:
            t_det = last = _at(detected)
            until = min((f["at"] for f in faults if f["at"] > t_det), default=float("inf"))
            for t in changes:
                if t_det <= t < until and t - last <= routing.dead_interval_s:
                    last = t
            entry.update(detection_ms=1e3 * (t_det - fault["at"]),
                         convergence_ms=1e3 * (last - t_det), detected_by=detected.get("node"))
        per_fault.append(entry)
    detections = [f["detection_ms"] for f in per_fault if f["detection_ms"] is not None]
    convergences = [f["convergence_ms"] for f in per_fault if f["convergence_ms"] is not None]
    first = faults[0]["at"] if faults else float("inf")
    return {"routing": {
        "metric": routing.metric, "hello_interval_s": routing.hello_interval_s,
        "dead_interval_s": routing.dead_interval_s,
        "reroutes": sum(1 for t in changes if t >= first),
        "detection_ms": max(detections) if detections else None,
        "detection_ms_median": statistics.median(detections) if detections else None,
        "convergence_ms_median": statistics.median(convergences) if convergences else None,
        "convergence_ms_max": max(convergences) if convergences else None,
        "faults": per_fault,
    }}
