"""App kinds as plugins: a kind defined in tests/ (plugins/echo_app.py) registered through
``QNET_APP_PLUGINS`` is validated, routed to its nodes and merged without touching qnet."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from emulator import apps
from emulator.child_config import node_apps
from emulator.results import app_sections
from emulator.scenario import ScenarioError, parse_scenario

RAW = {
    "scenario": {"name": "echo"},
    "nodes": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
    "links": [{"a": "a", "b": "b", "length_km": 1}],
    "apps": [{"kind": "test.echo", "a": "a", "b": "b", "count": 3}],
}


@pytest.fixture
def plugins(monkeypatch):
    """Set ``QNET_APP_PLUGINS`` for one test; the registry is reloaded before and after."""
    def use(value: str) -> None:
        monkeypatch.setenv(apps.PLUGINS_ENV, value)
        apps.kinds.cache_clear()
    yield use
    monkeypatch.delenv(apps.PLUGINS_ENV, raising=False)
    apps.kinds.cache_clear()


def test_builtin_kinds_come_from_entry_points() -> None:
    assert {"qkd.bb84", "qkd.bbm92", "entanglement.pairs", "teleport", "external"} <= set(
        apps.kinds())
    assert "test.echo" not in apps.kinds()


def test_plugin_kind_validates_routes_and_merges(plugins) -> None:
    plugins("plugins.echo_app:KIND")
    sc = parse_scenario(copy.deepcopy(RAW))
    (app,) = sc.apps
    assert apps.kind_of(app).kind == "test.echo" and app.count == 3
    assert [a.index for a in node_apps(sc, "a")] == [0] and node_apps(sc, "c") == []
    assert node_apps(sc, "b")[0].spec == {"kind": "test.echo", "a": "a", "b": "b", "count": 3}
    entries = [{"role": "a", "sent": 3, "echo_ok": 3, "rtt_ms_median": 1.0, "app": 0},
               {"role": "b", "echoed": 3, "app": 0},
               {"role": "a", "sent": 9, "echo_ok": 9, "app": 7}]  # no such app: dropped
    sections = app_sections(sc, entries)
    (echo,) = sections["echo"]
    assert (echo["round_trips"], echo["echoed_by_b"], echo["reported"]) == (3, 3, ["a", "b"])
    assert sections["qkd"] == [] and sections["entanglement"] == []  # built-ins still there


def test_plugin_merge_sees_a_partial_set(plugins) -> None:
    plugins("plugins.echo_app:KIND")
    sc = parse_scenario(copy.deepcopy(RAW))
    (echo,) = app_sections(sc, [{"role": "b", "echoed": 3, "app": 0}])["echo"]
    assert echo["round_trips"] == 0 and echo["reported"] == ["b"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r["apps"][0].update(count=0), r"^apps\[0\]\.count: Expected `int` >= 1"),
    (lambda r: r["apps"][0].update(colour=1), r"^apps\[0\]\.colour: unknown key"),
    (lambda r: r["apps"][0].update(b="c"), r"^apps\[0\]\.b: no link between 'a' and 'c'"),
    (lambda r: r["apps"][0].update(b="zed"), r"^apps\[0\]\.b: unknown node 'zed'"),
])
def test_plugin_spec_errors_name_the_field(plugins, change, message) -> None:
    plugins("plugins.echo_app:KIND")
    raw = copy.deepcopy(RAW)
    change(raw)
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(raw)


def test_unregistered_kind_is_an_invalid_value() -> None:
    with pytest.raises(ScenarioError, match=r"^apps\[0\]\.kind: Invalid value 'test.echo'"):
        parse_scenario(copy.deepcopy(RAW))


@pytest.mark.parametrize(("value", "message"), [
    ("plugins.nowhere:KIND", "No module named 'plugins.nowhere'"),
    ("plugins.echo_app:merge", "is a function, not an AppKind"),
    ("plugins.echo_app:KIND,plugins.echo_app:KIND", None),  # the same object twice is fine
    ("plugins.echo_app:KIND,tests_dup_kind:KIND", "registered twice"),
    ("tests_dup_kind:RETAGGED", "spec must be a msgspec Struct with tag='test.other'"),
])
def test_bad_plugins_are_clear_errors(plugins, tmp_path, monkeypatch, value, message) -> None:
    (tmp_path / "tests_dup_kind.py").write_text(
        "import dataclasses\nfrom plugins import echo_app\n"
        "KIND = dataclasses.replace(echo_app.KIND)\n"
        "RETAGGED = dataclasses.replace(echo_app.KIND, kind='test.other')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins(value)
    if message is None:
        assert "test.echo" in apps.kinds()
        return
    with pytest.raises(apps.PluginError, match=message):
        apps.kinds()
    with pytest.raises(ScenarioError, match=r"^apps\[0\]\.kind: app (plugin|kind)"):
        parse_scenario(copy.deepcopy(RAW))


def test_emulator_never_imports_nodes() -> None:
    """Kinds are reached through the registry; ``emulator/`` names no app package."""
    root = Path(__file__).resolve().parent.parent / "emulator"
    offending = [f"{path.relative_to(root)}:{n}" for path in sorted(root.rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.match(r"\s*(from|import) nodes\b", line)]
    assert offending == []
