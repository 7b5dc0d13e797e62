"""result.json's ``entanglement`` entry of one ``entanglement.pairs`` app.

End ``b`` reports the joined outcomes (``role = "report"``), end ``a`` its own counters, and
every repeater its swaps and measurements (routers must show none) under ``repeaters``.
The prediction (``fidelity_model``) is computed here, from the scenario (``model.py``).
"""

from __future__ import annotations

from typing import Any

from emulator.results import join_ends, print_rows
from nodes.entanglement.pairs import model


def merge(scenario: Any, app: Any, entries: list[dict]) -> list[dict]:
    """Join the ends' entries of ``app`` and list its repeaters' counters."""
    name = app.name or f"{app.a}-{app.b}"
    repeaters = [{k: e[k] for k in ("node", "swaps", "measurements", "remote_errors") if k in e}
                 for e in entries if e.get("section") == "repeater"]
    ends = [e for e in entries if e.get("section") != "repeater"]
    if not ends and not repeaters:
        return []
    entry = join_ends(ends, name)
    entry.update(model.predict(scenario, app, entry))
    if repeaters:
        entry["repeaters"] = sorted(repeaters, key=lambda r: r.get("node", ""))
    return [entry]


ROWS = [("pairs", "pairs", ",d"), ("pairs/s (emulated)", "pairs_per_s", ",.0f"),
        ("pairs/s (model, one link)", "pairs_per_s_model", ",.0f"),
        ("fidelity (estimated)", "fidelity_mean", ".4f"),
        ("  standard error", "fidelity_std", ".4f"),
        ("fidelity (model)", "fidelity_model", ".4f"),
        ("swap latency median (ms)", "swap_latency_ms_median", ".2f")]


CONVERSION_ROWS = [("true heralds (model)", "true_herald_fraction", ".5f"),
                   ("pairs/s unconverted (model)", "pairs_per_s_unconverted_model", ",.0f"),
                   ("crossover length (km)", "crossover_km", ".2f")]


def print_summary(console: Any, entry: dict) -> None:
    """The entry's estimate beside its model."""
    print_rows(console, f"entanglement {entry.get('name')} "
                        f"(path {' - '.join(entry.get('path') or [])})", entry, ROWS)
    if entry.get("conversion"):
        print_rows(console, f"{entry.get('name')}: frequency conversion", entry["conversion"],
                   CONVERSION_ROWS)
