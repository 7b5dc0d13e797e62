"""``[[apps]] kind = "external"``: the spec and its result entries (one per end, as reported)."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta, Struct

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
    """Each end's entry as its program printed it (the programs define their own fields)."""
    return [{k: v for k, v in e.items() if k not in ("section", "app")}
            for e in sorted(entries, key=lambda e: e.get("name", ""))]
