"""``[[apps]] kind = "external"``: the spec and the merge of what the programs printed."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta, Struct

from emulator.results import join_ends, print_rows
from emulator.scenario import Name, Scenario, ScenarioError


class ExternalApp(Struct, tag="external", tag_field="kind", forbid_unknown_fields=True):
    """A program run as its own process at ``a`` and at ``b``, driving its node through the
    local app socket (nodes/app_socket.py); ``python`` as ``command[0]`` is this Python."""

    a: Name
    b: Name
    command: Annotated[list[str], Meta(min_length=1)]


def validate(sc: Scenario, i: int, app: ExternalApp) -> None:
    if app.a == app.b:
        raise ScenarioError(f"apps[{i}].b: the two ends must differ")


def merge(scenario: Any, app: ExternalApp, entries: list[dict]) -> list[dict]:
    """The programs define their fields: entries with the same ``section`` and ``name`` are
    joined (a ``role = "report"`` entry first), those without a section go to ``external``."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for entry in entries:
        key = (entry.get("section") or "external", str(entry.get("name", "")))
        groups.setdefault(key, []).append(entry)
    return [{**join_ends(group, name), "section": section}
            for (section, name), group in sorted(groups.items())]


def print_summary(console: Any, entry: dict) -> None:
    """Every number the program reported (its fields are its own)."""
    rows = [(key, key, ",d" if isinstance(value, int) else ".4g")
            for key, value in entry.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)]
    print_rows(console, f"external {entry.get('name')}", entry, rows)
