"""result.json's ``teleport`` entry of one ``teleport`` app (receiver's report + sender's)."""

from __future__ import annotations

from typing import Any

from emulator.results import join_ends


def merge(scenario: Any, app: Any, entries: list[dict]) -> list[dict]:
    """The receiver's report, completed with the sender's fields."""
    return [join_ends(entries, f"{app.a}-{app.b}")] if entries else []
