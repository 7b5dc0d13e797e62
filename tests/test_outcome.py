"""Run folders: fresh ones are private, reused ones lose the previous run's files only."""

from __future__ import annotations

import stat

from emulator.outcome import first_leaf, make_run_dir


def test_a_new_run_dir_is_private(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = make_run_dir(None, "demo")
    second = make_run_dir(None, "demo")
    assert first != second and (tmp_path / first).parent == tmp_path / "runs"
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    given = make_run_dir(tmp_path / "a" / "b", "demo")
    assert stat.S_IMODE(given.stat().st_mode) == 0o700


def test_a_reused_run_dir_is_cleared_of_run_files_only(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = ["alice.ready.json", "alice.config.json", "alice.log", "result.json",
             "scenario.toml", "bob.ready.json.tmp"]
    for name in stale + ["notes.txt", "plot.png"]:
        (run_dir / name).write_text("old")
    assert make_run_dir(run_dir, "demo") == run_dir
    assert sorted(p.name for p in run_dir.iterdir()) == ["notes.txt", "plot.png"]


def test_first_leaf_unwraps_nested_groups():
    error = ValueError("inner")
    assert first_leaf(ExceptionGroup("a", [ExceptionGroup("b", [error])])) is error
