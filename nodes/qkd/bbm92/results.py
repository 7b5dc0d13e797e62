"""result.json's ``entanglement`` entry of one ``qkd.bbm92`` app (b reports, a completes)."""

from __future__ import annotations

from typing import Any

from emulator.results import join_ends


def merge(scenario: Any, app: Any, entries: list[dict]) -> list[dict]:
    """Join both ends' entries; every message is authenticated both ways, so rejects add."""
    if not entries:
        return []
    entry = join_ends(entries, f"bbm92/{app.a}-{app.b}")
    entry["auth_rejected"] = (entry.get("auth_rejected_a") or 0) + (
        entry.get("auth_rejected_b") or 0)
    return [entry]
