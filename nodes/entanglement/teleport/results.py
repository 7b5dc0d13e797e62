"""result.json's ``teleport`` entry of one ``teleport`` app (receiver's report + sender's)."""

from __future__ import annotations

from typing import Any

from emulator.results import join_ends, print_rows
from nodes.entanglement.teleport import model


def merge(scenario: Any, app: Any, entries: list[dict]) -> list[dict]:
    """The receiver's report, completed with the sender's fields and the model."""
    if not entries:
        return []
    entry = join_ends(entries, f"{app.a}-{app.b}")
    entry.update(model.predict(scenario, app, entry))
    return [entry]


ROWS = [("states", "count", ",d"), ("fidelity (estimated)", "fidelity_mean", ".4f"),
        ("  standard error", "fidelity_std", ".4f"),
        ("fidelity (model, random inputs)", "fidelity_model", ".4f"),
        ("round trip median (wall ms)", "round_trip_ms_median", ".2f")]


def print_summary(console: Any, entry: dict) -> None:
    print_rows(console, f"teleport {entry.get('name')}", entry, ROWS)
