"""End to end: a failure inside a daemon task ends the run with exit 3 and the daemon's log
tail within 5 s (or, on a machine slow enough to take longer to start the run, within its
start-up time), never a silent timeout.

The failure is injected from outside the production code: a ``sitecustomize.py`` on the run's
``PYTHONPATH`` (inherited by every child) wraps the frame sampler so that it raises once a few
frames have been sampled, and writes the wall time of the failure to a marker file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from qnet_process import ROOT, alive, descendants

pytestmark = pytest.mark.e2e

SITECUSTOMIZE = textwrap.dedent('''
    import os
    import time

    from emulator.physics import detection

    _original = detection.detect_frame
    _calls = [0]

    def _failing(*args, **kwargs):
        _calls[0] += 1
        if _calls[0] > int(os.environ["QNET_TEST_FAIL_AFTER"]):
            with open(os.environ["QNET_TEST_FAIL_MARKER"], "w") as marker:
                marker.write(repr(time.time()))
            raise RuntimeError("injected sampler failure")
        return _original(*args, **kwargs)

    detection.detect_frame = _failing
''')


def test_daemon_task_failure_exits_3_with_the_daemon_log_tail(tmp_path: Path) -> None:
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    marker = tmp_path / "failed_at"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
               [str(inject), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "QNET_TEST_FAIL_AFTER": "20", "QNET_TEST_FAIL_MARKER": str(marker)}
    launched = time.time()
    process = subprocess.Popen(  # 60 s: a missed failure would wait out most of them
        [sys.executable, "-m", "emulator", "run", str(ROOT / "scenarios" / "quickstart.toml"),
         "--duration", "60", "--run-dir", str(tmp_path / "run"), "--no-progress"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            children |= descendants(process.pid)
            time.sleep(0.1)
        ended = time.time()
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert marker.exists(), "the injected failure never happened\n" + out + err
    failed_at = float(marker.read_text())
    print(f"exit {process.returncode} {ended - failed_at:.2f} s after the failure\n{err[-800:]}")
    assert process.returncode == 3, out + err
    # Stopping is the same processes' work as starting them (on a loaded 2-core machine the
    # stop took 4.0 s of wall and the start 9 s): the bound is 5 s, or the run's own start-up
    # (launch to its start event) where that was longer; both far below the 60 s run.
    start = next(e for e in json.loads((tmp_path / "run" / "result.json").read_text())["events"]
                 if e["kind"] == "start")
    bound = max(5.0, start["wall"] - launched)
    print(f"start-up {start['wall'] - launched:.2f} s, bound {bound:.2f} s")
    assert ended - failed_at < bound, f"run ended {ended - failed_at:.1f} s after the failure"
    assert "daemon" in err and "injected sampler failure" in err, err  # the daemon's log tail
    assert not [pid for pid in children if alive(pid)], "a child outlived the run"
