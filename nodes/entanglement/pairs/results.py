"""result.json's ``entanglement`` entry of one ``entanglement.pairs`` app.

End ``b`` reports the joined outcomes (``role = "report"``), end ``a`` its own counters, and
every repeater its swaps and measurements (routers must show none) under ``repeaters``.
"""

from __future__ import annotations

from typing import Any

from emulator.results import join_ends


def merge(scenario: Any, app: Any, entries: list[dict]) -> list[dict]:
    """Join the ends' entries of ``app`` and list its repeaters' counters."""
    name = app.name or f"{app.a}-{app.b}"
    repeaters = [{k: e[k] for k in ("node", "swaps", "measurements") if k in e}
                 for e in entries if e.get("section") == "repeater"]
    ends = [e for e in entries if e.get("section") != "repeater"]
    if not ends and not repeaters:
        return []
    entry = join_ends(ends, name)
    if repeaters:
        entry["repeaters"] = sorted(repeaters, key=lambda r: r.get("node", ""))
    return [entry]
