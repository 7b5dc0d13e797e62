"""``Child.on_ready`` runs at every readiness, restarts included, and a restart policy set
on a running child (as the orchestrator's crash fault does) governs its next exit."""

from __future__ import annotations

import os
import signal
import time

import trio

from emulator.supervise import Restart, open_supervisor, pid_alive
from tests.test_supervise import assert_reaped, child

BODY = """
ready()
time.sleep(60)
"""


async def test_a_policy_set_after_start_restarts_once_after_its_backoff(tmp_path) -> None:
    seen: list[tuple[int | None, float]] = []
    again = trio.Event()

    def on_ready(c) -> None:
        seen.append((c.pid, time.monotonic()))
        if len(seen) == 2:
            again.set()

    sleeper = child(tmp_path, "sleeper", BODY, on_ready=on_ready)
    async with open_supervisor(grace_s=1.0, raise_failures=False) as sup:
        await sup.start(sleeper)
        first = sleeper.pid
        assert [pid for pid, _ in seen] == [first]
        sleeper.restart = Restart("on-failure", max_restarts=1, backoff_s=0.3)
        killed = time.monotonic()
        os.kill(first, signal.SIGKILL)
        with trio.fail_after(15):
            await again.wait()
        second = sleeper.pid
        assert second != first and not pid_alive(first)
        assert seen[1][0] == second and seen[1][1] - killed >= 0.3
        assert sleeper.exits == [-signal.SIGKILL] and sleeper.restarts == 1
        os.kill(second, signal.SIGKILL)  # no restart left: a failure, recorded
        with trio.fail_after(15):
            await sup.failed.wait()
        assert "exited unexpectedly with code -9" in str(sup.failures[0])
    assert_reaped(first), assert_reaped(second)
