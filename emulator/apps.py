"""The registry of app kinds: what a ``[[apps]] kind = "..."`` entry is and who handles it.

An app kind is one package (e.g. ``nodes/qkd/bb84/``) that exports an ``AppKind``: its scenario
spec (a tagged msgspec Struct), its validation, the nodes that run it, its node-side entry point
(named by string, so ``emulator`` never imports ``nodes``) and its result merge with the
predictions (computed here in the orchestrator, never in a node). Kinds are found through the
``qnet.apps`` entry-point group (``pyproject.toml``) and the ``QNET_APP_PLUGINS`` environment
variable (``module:attribute`` entries separated by commas), which child processes inherit.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "qnet.apps"
PLUGINS_ENV = "QNET_APP_PLUGINS"


def _ends(app: Any) -> list[str]:
    return [app.a, app.b]


def _no_checks(scenario: Any, index: int, app: Any) -> None:
    return None


@dataclass(frozen=True)
class AppKind:
    """Everything qnet needs to know about one app kind.

    ``validate(scenario, index, app)`` raises ``ScenarioError("apps[<index>].<field>: ...")``
    and may complete the spec in place (e.g. resolve a default path). ``merge(scenario, app,
    entries)`` turns the entries the app's nodes returned (each tagged with the app's index)
    into the entries of result.json section ``section`` (an entry's own ``"section"`` key, if
    any, files it elsewhere), predictions included; it must accept a partial set (a node that
    died reports nothing).
    """

    kind: str
    spec: type
    entry: str  # "package.module:function", async def function(node, app) -> list[dict]
    section: str
    merge: Callable[[Any, Any, list[dict]], list[dict]]
    validate: Callable[[Any, int, Any], None] = _no_checks
    nodes: Callable[[Any], list[str]] = _ends
    summary: Callable[[Any, dict], None] | None = None  # (console, section entry) -> table
    extra: dict[str, Any] = field(default_factory=dict)


class PluginError(Exception):
    """An app plugin could not be loaded (bad entry point, not an AppKind, duplicate kind)."""


def _load(target: str) -> AppKind:
    module_name, _, attribute = target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attribute or "KIND")
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"app plugin {target!r}: {exc}") from None
    if not isinstance(obj, AppKind):
        raise PluginError(f"app plugin {target!r} is a {type(obj).__name__}, not an AppKind")
    config = getattr(obj.spec, "__struct_config__", None)
    if config is None or config.tag != obj.kind or config.tag_field != "kind":
        raise PluginError(f"app plugin {target!r}: spec must be a msgspec Struct with "
                          f"tag={obj.kind!r}, tag_field='kind'")
    return obj


@cache
def kinds() -> dict[str, AppKind]:
    """Every registered app kind by its ``kind`` string (loaded once per process)."""
    targets = [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    targets += [t.strip() for t in os.environ.get(PLUGINS_ENV, "").split(",") if t.strip()]
    found: dict[str, AppKind] = {}
    for target in targets:
        kind = _load(target)
        if kind.kind in found and found[kind.kind] is not kind:
            raise PluginError(f"app kind {kind.kind!r} is registered twice ({target!r})")
        found[kind.kind] = kind
    return found


def kind_of(app: Any) -> AppKind:
    """The ``AppKind`` of a validated app spec (by its msgspec tag)."""
    return kinds()[type(app).__struct_config__.tag]


def entry_function(kind: AppKind) -> Callable:
    """Resolve the node-side entry point (called in the node process only)."""
    module_name, _, function = kind.entry.partition(":")
    return getattr(importlib.import_module(module_name), function)
