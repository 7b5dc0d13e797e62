"""``[[faults]]``: a crash names a known node (and no link); link actions name a known link,
a plane, and a degrade its extra dB (quantum) or loss (classical)."""

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
    ('[{at_s = 1, action = "crash", node = "bob", plane = "quantum"}]',
     r"^faults\[0\]: a crash has no plane"),
    ('[{at_s = 1, action = "cut", link = "alice-bob", plane = "air"}]',
     r"^faults\[0\]\.plane: Invalid enum value 'air'"),
    ('[{at_s = 1, action = "cut", link = "alice-bob", db = 3}]',
     r"^faults\[0\]: db and loss belong to action 'degrade'"),
    ('[{at_s = 1, action = "degrade", link = "alice-bob"}]',
     r"^faults\[0\]: degrade needs db > 0 \(quantum plane\) or loss > 0"),
    ('[{at_s = 1, action = "degrade", link = "alice-bob", plane = "classical", db = 3}]',
     r"^faults\[0\]: degrade needs db > 0 .* on plane 'classical'"),
    ('[{at_s = 1, action = "degrade", link = "alice-bob", loss = 1.5}]',
     r"^faults\[0\]\.loss: Expected `float` <= 1"),
    ('[{at_s = 1, action = "degrade", link = "alice-bob", db = -1}]',
     r"^faults\[0\]\.db: Expected `float` >= 0"),
    ('[{at_s = 1, action = "corrupt", link = "alice-bob", plane = "quantum"}]',
     r"^faults\[0\]\.plane: corrupt flips a bit of classical traffic"),
    ('[{at_s = 1, action = "corrupt", link = "alice-bob", for_s = 1}]',
     r"^faults\[0\]\.for_s: a corrupt fault is one flipped bit"),
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


def test_planes_and_degrade_validate() -> None:
    sc = load_scenario(QUICKSTART, [
        'faults=[{at_s = 1, action = "cut", link = "alice-bob", plane = "quantum", for_s = 1},'
        ' {at_s = 2, action = "degrade", link = "alice-bob", db = 3, loss = 0.1, for_s = 0.5},'
        ' {at_s = 3, action = "degrade", link = "alice-bob", plane = "classical", loss = 0.2}]'])
    assert [(f.action, f.plane, f.db, f.loss, f.for_s) for f in sc.faults] == [
        ("cut", "quantum", 0.0, 0.0, 1.0), ("degrade", "both", 3.0, 0.1, 0.5),
        ("degrade", "classical", 0.0, 0.2, None)]
