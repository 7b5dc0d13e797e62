"""Building result.json from what the processes reported, checking expectations, printing.

The shape of result.json is a contract (issue 2): top level ``scenario, seed, ok, wall_s,
emulated_s, processes, links, expectations`` and one list per app section (``qkd``,
``entanglement``, ``teleport``, ...). Node entries arrive per node over MQTT, each tagged with
the index of the app that produced it (``"app": i``); ``app_sections`` hands each app's
entries to its kind's ``merge`` (which adds the predictions) and files the result under the
kind's section. App kinds know nothing of each other; this module knows no app kind.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.table import Table

from emulator.apps import kind_of, kinds
from emulator.scenario import Expect, Scenario

ROUTING_FIELDS = ("section", "role", "app")
KIND_FIELD = "app_kind"  # added to every merged entry: which kind's summary prints it


def app_sections(scenario: Scenario, node_entries: list[dict]) -> dict[str, list[dict]]:
    """Group the node entries by app index, merge each app with its kind, file by section.

    Every registered kind's section is present (empty when no app of that kind ran); an app
    whose nodes reported nothing is merged from an empty list (its kind decides what that
    shows). A merged entry may name another section (``"section"``: external programs
    report into ``entanglement``). Entries without a valid app index are dropped."""
    sections: dict[str, list[dict]] = {kind.section: [] for kind in kinds().values()}
    by_app: dict[int, list[dict]] = {i: [] for i in range(len(scenario.apps))}
    for entry in node_entries:
        index = entry.get("app")
        if isinstance(index, int) and index in by_app:
            by_app[index].append(entry)
    for i, app in enumerate(scenario.apps):
        kind = kind_of(app)
        for merged in kind.merge(scenario, app, by_app[i]):
            merged[KIND_FIELD] = kind.kind
            sections.setdefault(merged.pop("section", kind.section), []).append(merged)
    return sections


def join_ends(entries: list[dict], name: str) -> dict:
    """One result entry from the entries an app's nodes returned (a node may be missing).

    The ``role = "report"`` entry (from the end that holds both ends' outcomes) wins; the other
    ends' fields fill in where the report has none. Routing fields are dropped."""
    joined: dict = {}
    for entry in sorted(entries, key=lambda e: e.get("role") != "report"):
        for k, v in entry.items():
            if k not in ROUTING_FIELDS:
                joined.setdefault(k, v)
    joined.setdefault("name", name)
    return joined


def metric_value(result: dict, metric: str) -> Any:
    """Resolve ``qkd.alice-bob.qber``: a list section is indexed by its entries' link/name."""
    value: Any = result
    for key in metric.split("."):
        if isinstance(value, list):
            value = next((e for e in value if isinstance(e, dict)
                          and key in (e.get("link"), e.get("name"))), None)
        elif isinstance(value, dict):
            value = value.get(key)
        else:
            return None
        if value is None:
            return None
    return value


def check_expectations(result: dict, expectations: list[Expect]) -> list[dict]:
    """Each ``[[expect]]`` with the value found (None: metric absent or not a number)."""
    checked = []
    for expect in expectations:
        value = metric_value(result, expect.metric)
        number = value if isinstance(value, (int, float)) else None
        checked.append({"metric": expect.metric, "value": number, "ok": expect.holds(number),
                        "condition": expect.describe()})
    return checked


def fmt(value: Any, spec: str = ".4g") -> str:
    """A table cell: ``-`` for missing or NaN, else ``format(value, spec)``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def print_rows(console: Console, title: str, entry: dict,
               rows: list[tuple[str, str, str]]) -> None:
    """A two-column table of ``(label, key, format)`` rows, skipping keys the entry lacks."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for label, key, spec in rows:
        if entry.get(key) is not None:
            table.add_row(label, fmt(entry[key], spec))
    console.print(table)


def print_summary(console: Console, result: dict) -> None:
    """Each app entry through its kind's summary, then the classical links and expectations."""
    registered = kinds()
    for section in dict.fromkeys(kind.section for kind in registered.values()):
        for entry in result.get(section) or []:
            kind = registered.get(entry.get(KIND_FIELD, ""))
            if kind is not None and kind.summary is not None:
                kind.summary(console, entry)
    if result.get("links"):
        table = Table(title="classical links (through the relays)")
        for column in ("link", "bytes a->b", "bytes b->a", "messages", "dropped"):
            table.add_column(column, justify="right" if column != "link" else "left")
        for link in result["links"]:
            c = link.get("classical") or {}
            table.add_row(link["name"], fmt(c.get("bytes_ab"), ",d"),
                          fmt(c.get("bytes_ba"), ",d"), fmt(c.get("messages"), ",d"),
                          fmt(c.get("dropped"), ",d"))
        console.print(table)
    if result.get("expectations"):
        table = Table(title="expectations")
        for column in ("metric", "condition", "value", "ok"):
            table.add_column(column)
        for e in result["expectations"]:
            table.add_row(e["metric"], e["condition"], fmt(e["value"]),
                          "[green]yes[/green]" if e["ok"] else "[red]NO[/red]")
        console.print(table)
