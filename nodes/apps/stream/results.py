"""result.json ``streams``: one entry per ``classical.stream`` app from its two ends' reports."""

from __future__ import annotations

from typing import Any

from emulator.results import print_rows
from nodes.apps.stream.spec import StreamApp

FIELDS = ("src", "dst", "sent", "delivered", "lost", "duplicates", "out_of_order",
          "max_gap_ms")


def merge(scenario: Any, app: StreamApp, entries: list[dict]) -> list[dict]:
    """Sender and receiver joined; ``lost`` = sent - delivered (None while an end is missing)."""
    sender = next((e for e in entries if e.get("role") == "sender"), {})
    receiver = next((e for e in entries if e.get("role") == "receiver"), {})
    out: dict = {"name": f"{app.a}->{app.b}:{app.port}", "src": app.a, "dst": app.b,
                 "sent": sender.get("sent"), "delivered": receiver.get("delivered")}
    out["lost"] = (out["sent"] - out["delivered"]
                   if None not in (out["sent"], out["delivered"]) else None)
    for key in ("duplicates", "out_of_order", "max_gap_ms", "latency_ms_median",
                "latency_ms_max", "duplicates_suppressed", "segments_out_of_order"):
        out[key] = receiver.get(key)
    for key in ("path", "path_at_end", "started_at_s", "retransmitted", "timeouts", "reroutes",
                "all_acked", "error"):
        if key in sender:
            out[key] = sender[key]
    out["rate_hz"], out["size_bytes"] = app.rate_hz, app.size_bytes
    return [out]


def print_summary(console: Any, entry: dict) -> None:
    rows = [("sent", "sent", ",d"), ("delivered", "delivered", ",d"), ("lost", "lost", ",d"),
            ("duplicates", "duplicates", ",d"), ("out of order", "out_of_order", ",d"),
            ("longest gap (ms)", "max_gap_ms", ".1f"),
            ("latency median (ms)", "latency_ms_median", ".2f"),
            ("retransmitted", "retransmitted", ",d"), ("reroutes", "reroutes", ",d"),
            ("path at start", "path", ""), ("path at end", "path_at_end", "")]
    print_rows(console, f"stream {entry.get('name')}", entry, rows)
