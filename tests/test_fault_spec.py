"""``[[faults]]``: a crash names a known node (and no link); link actions name a known link."""

from __future__ import annotations

from pathlib import Path

import pytest

from emulator.scenario import ScenarioError, load_scenario

QUICKSTART = Path(__file__).resolve().parents[1] / "scenarios" / "quickstart.toml"

BAD = [
    ('[{at_s = 1, action = "crash", node = "carol"}]', r"^faults\[0\]\.node: unknown node 'carol'"),
    ('[{at_s = 1, action = "crash"}]', r"^faults\[0\]: action 'crash' takes node, not link"),
    ('[{at_s = 1, action = "crash", node = "bob", link = "alice-bob"}]',
     r"^faults\[0\]: action 'crash' takes node"),
    ('[{at_s = 1, action = "crash", node = "bob", for_s = 2}]', r"^faults\[0\]\.for_s: a crash"),
    ('[{at_s = 1, action = "cut", node = "bob"}]', r"^faults\[0\]: action 'cut' takes link"),
    ('[{at_s = 1, action = "cut", link = "alice-bob", restart_after_s = 1}]',
     r"^faults\[0\]\.restart_after_s: only a crash"),
    ('[{at_s = 1, action = "crash", node = "bob", restart_after_s = -1}]',
     r"^faults\[0\]\.restart_after_s: Expected `float` >= 0"),
]


@pytest.mark.parametrize("value,message", BAD)
def test_bad_faults_name_their_path(value: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        load_scenario(QUICKSTART, [f"faults={value}"])


def test_a_crash_with_and_without_restart_validates() -> None:
    sc = load_scenario(QUICKSTART, [
        'faults=[{at_s = 1, action = "crash", node = "bob", restart_after_s = 0.5},'
        ' {at_s = 3, action = "crash", node = "alice"}]'])
    assert [(f.node, f.link, f.restart_after_s) for f in sc.faults] == [
        ("bob", None, 0.5), ("alice", None, None)]
