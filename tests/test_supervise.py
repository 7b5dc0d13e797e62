"""The supervisor against tiny Python children: readiness, grace, SIGKILL, restart, reaping,
stop order, and children dying with a SIGKILLed supervisor (PR_SET_PDEATHSIG).

Every child is checked gone afterwards: no process and no zombie (its /proc entry is absent).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from emulator.supervise import Child, ChildFailed, Restart, open_supervisor, pid_alive, running

REPO = Path(__file__).resolve().parents[1]

# Prelude of every child script: ready() writes the ready file atomically, like write_ready.
PRELUDE = """
import json, os, signal, sys, time
from pathlib import Path
def ready(**info):
    path = Path(sys.argv[1]); tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **info})); os.replace(tmp, path)
"""


def child(tmp_path: Path, name: str, body: str, **options) -> Child:
    script = tmp_path / f"{name}.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    ready_file = tmp_path / f"{name}.ready.json"
    return Child(name=name, role="test", argv=[sys.executable, str(script), str(ready_file)],
                 log_path=tmp_path / f"{name}.log", ready_file=ready_file, **options)


@contextlib.contextmanager
def fails(match: str) -> Iterator[None]:
    """Expect a ChildFailed matching ``match``, bare or inside the supervisor's group."""
    with pytest.raises((ChildFailed, ExceptionGroup)) as caught:
        yield
    error: BaseException = caught.value
    while isinstance(error, BaseExceptionGroup):
        assert len(error.exceptions) == 1
        error = error.exceptions[0]
    assert isinstance(error, ChildFailed) and re.search(match, str(error)), error


def assert_reaped(pid: int) -> None:
    assert not pid_alive(pid)
    assert not Path(f"/proc/{pid}").exists(), f"pid {pid} left as a zombie"


POLITE = """
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ready(port=1234)
while True:
    time.sleep(1)
"""

STUBBORN = """
signal.signal(signal.SIGTERM, signal.SIG_IGN)
ready()
while True:
    time.sleep(1)
"""


async def test_ready_then_sigterm_within_grace(tmp_path):
    polite = child(tmp_path, "polite", POLITE)
    async with open_supervisor(grace_s=5.0) as sup:
        await sup.start(polite)
        assert polite.ready["port"] == 1234 and polite.ready["pid"] == polite.pid
        pid = polite.pid
        stop_began = trio.current_time()
    assert trio.current_time() - stop_began < 4.0  # it left on SIGTERM, not after the grace
    assert polite.exit_code == 0 and polite.exits == [0]
    assert_reaped(pid)


async def test_stubborn_child_is_killed_after_grace(tmp_path):
    stubborn = child(tmp_path, "stubborn", STUBBORN)
    async with open_supervisor(grace_s=0.3) as sup:
        await sup.start(stubborn)
        pid = stubborn.pid
    assert stubborn.exit_code == -signal.SIGKILL
    assert_reaped(pid)


async def test_crashing_child_is_restarted_and_becomes_ready(tmp_path):
    marker = tmp_path / "crashed-once"
    flaky = child(tmp_path, "flaky", f"""
        marker = Path({str(marker)!r})
        if not marker.exists():
            marker.write_text("x")
            sys.exit(7)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        ready(attempt=2)
        while True:
            time.sleep(1)
        """, restart=Restart("on-failure", max_restarts=2, backoff_s=0.05))
    async with open_supervisor() as sup:
        await sup.start(flaky)
        assert flaky.ready["attempt"] == 2 and flaky.restarts == 1
        pid = flaky.pid
    assert flaky.exits == [7, 0]
    assert_reaped(pid)


async def test_restart_after_ready_then_give_up(tmp_path):
    crashy = child(tmp_path, "crashy", """
        ready()
        time.sleep(0.1)
        sys.exit(5)
        """, restart=Restart("on-failure", max_restarts=1, backoff_s=0.05))
    with fails("unexpectedly with code 5"):
        async with open_supervisor() as sup:
            await sup.start(crashy)
            await trio.sleep(10)  # the second crash (no restarts left) cancels this
    assert crashy.exits == [5, 5] and crashy.restarts == 1
    assert_reaped(crashy.pid)


async def test_unexpected_exit_fails_the_run_but_an_expected_one_does_not(tmp_path):
    quitter = child(tmp_path, "quitter", "ready()\ntime.sleep(0.2)\n")
    with fails("quitter .* exited unexpectedly with code 0"):
        async with open_supervisor() as sup:
            await sup.start(quitter)
            await trio.sleep(10)

    finisher = child(tmp_path, "finisher", "ready()\ntime.sleep(0.2)\n")
    async with open_supervisor() as sup:
        await sup.start(finisher)
        sup.expect_exits()
        await trio.sleep(1.0)
    assert finisher.exit_code == 0
    assert_reaped(finisher.pid)


async def test_the_root_failure_is_the_lowest_tier_even_when_it_is_reaped_second(tmp_path):
    # A node exits the moment its daemon's connection closes, often before the daemon is
    # reaped: the run must still report the daemon.
    daemon = child(tmp_path, "daemon", "ready()\ntime.sleep(0.4)\nsys.exit(5)\n", tier=1)
    node = child(tmp_path, "node", "ready()\ntime.sleep(0.25)\nsys.exit(1)\n", tier=3)
    async with open_supervisor(raise_failures=False) as sup:
        await sup.start_all([daemon, node])
        await sup.failed.wait()
        assert [f.child.name for f in sup.failures] == ["node"]
        await sup.settle_failures(5.0)
    assert [f.child.name for f in sup.failures] == ["node", "daemon"]
    assert sup.root_failure().child is daemon

    alone = child(tmp_path, "alone", "ready()\ntime.sleep(0.1)\nsys.exit(1)\n", tier=3)
    async with open_supervisor(raise_failures=False) as sup:
        await sup.start(alone)
        await sup.failed.wait()
        started = trio.current_time()
        await sup.settle_failures(0.3)  # nothing below it fails: bounded by the timeout
        assert 0.25 < trio.current_time() - started < 2.0
        assert sup.root_failure().child is alone

    suicide = "ready()\ntime.sleep(0.3)\nos.kill(os.getpid(), signal.SIGKILL)\n"  # after ready
    killed = child(tmp_path, "killed", suicide, tier=3)
    async with open_supervisor(raise_failures=False) as sup:
        await sup.start(killed)
        await sup.failed.wait()
        started = trio.current_time()
        await sup.settle_failures(5.0)  # killed by a signal: it did not die of its daemon
        assert trio.current_time() - started < 0.1


async def test_readiness_timeout(tmp_path):
    silent = child(tmp_path, "silent", "time.sleep(30)\n")
    with fails("was not ready within 0.3 s"):
        async with open_supervisor(grace_s=1.0) as sup:
            await sup.start(silent, ready_timeout=0.3)
    assert silent.exit_code == -signal.SIGTERM  # it had no handler: the signal ended it
    assert_reaped(silent.pid)


async def test_exit_before_ready(tmp_path):
    broken = child(tmp_path, "broken", "sys.exit(3)\n")
    with fails("exited with code 3 before it was ready"):
        async with open_supervisor() as sup:
            await sup.start(broken)
    assert_reaped(broken.pid)


async def test_a_stale_ready_file_is_never_read(tmp_path):
    late = child(tmp_path, "late", "time.sleep(0.3)\nready(fresh=True)\ntime.sleep(30)\n")
    assert late.ready_file is not None
    late.ready_file.write_text(json.dumps({"pid": 1, "fresh": False}))  # a previous run's
    async with open_supervisor(grace_s=1.0) as sup:
        await sup.start(late)
        assert late.ready == {"pid": late.pid, "fresh": True}
    assert_reaped(late.pid)


@pytest.mark.parametrize("ending", ["context exit", "outer cancel"])
async def test_ready_probe_and_stop_order_by_tier(tmp_path, ending):
    order = tmp_path / "order.txt"
    body = f"""
        def term(*_):
            with open({str(order)!r}, "a") as f:
                f.write(sys.argv[2] + "\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, term)
        Path(sys.argv[1]).write_text("up")
        while True:
            time.sleep(1)
        """
    probed: list[str] = []

    async def probe(c: Child) -> None:
        while not (tmp_path / f"{c.name}.up").exists():
            await trio.sleep(0.01)
        probed.append(c.name)

    kids = []
    for name, tier in (("base", 0), ("middle", 1), ("top", 2)):
        script = tmp_path / f"{name}.py"
        script.write_text(PRELUDE + textwrap.dedent(body))
        kids.append(Child(name=name, role="test", tier=tier, ready_probe=probe,
                          argv=[sys.executable, str(script), str(tmp_path / f"{name}.up"), name],
                          log_path=tmp_path / f"{name}.log"))
    with trio.CancelScope() as outer:
        async with open_supervisor() as sup:
            await sup.start_all(kids)
            if ending == "outer cancel":  # e.g. Ctrl-C: the order must hold all the same
                outer.cancel()
                await trio.sleep(5)
    assert outer.cancelled_caught == (ending == "outer cancel")
    assert sorted(probed) == ["base", "middle", "top"]
    assert order.read_text().split() == ["top", "middle", "base"]
    assert [k.exit_code for k in kids] == [0, 0, 0]
    for k in kids:
        assert_reaped(k.pid)


def test_children_die_with_a_killed_supervisor(tmp_path):
    """``kill -9`` of the supervising process: PR_SET_PDEATHSIG takes its children along,
    also after the worker threads of trio's thread cache have come and gone."""
    pid_file = tmp_path / "child.pid"
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(PRELUDE + "ready()\nwhile True:\n    time.sleep(1)\n")
    parent = tmp_path / "parent.py"
    parent.write_text(textwrap.dedent(f"""
        import sys, trio
        from pathlib import Path
        from emulator.supervise import Child, open_supervisor
        async def main():
            await trio.to_thread.run_sync(lambda: None)  # a worker thread exists
            async with open_supervisor() as sup:
                kid = Child("sleeper", "test", [sys.executable, {str(sleeper)!r},
                            {str(tmp_path / "sleeper.ready.json")!r}],
                            Path({str(tmp_path / "sleeper.log")!r}),
                            ready_file=Path({str(tmp_path / "sleeper.ready.json")!r}))
                await sup.start(kid)
                Path({str(pid_file)!r}).write_text(str(kid.pid))
                await trio.sleep_forever()
        trio.run(main)
        """))
    proc = subprocess.Popen([sys.executable, str(parent)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 20.0
        while not pid_file.exists() and time.monotonic() < deadline:
            assert proc.poll() is None, "the supervising process died"
            time.sleep(0.05)
        kid = int(pid_file.read_text())
        assert pid_alive(kid)
        proc.kill()
        proc.wait(timeout=5)
        deadline = time.monotonic() + 5.0
        while pid_alive(kid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(kid), "the child outlived its SIGKILLed supervisor"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


async def test_running_one_child_without_a_watcher(tmp_path):
    polite = child(tmp_path, "solo", POLITE)
    with pytest.raises(KeyError):  # the body's own exception, not wrapped in a group
        async with running(polite) as started:
            assert started.ready["port"] == 1234
            raise KeyError("from the body")
    assert polite.exit_code == 0
    assert_reaped(polite.pid)


@pytest.mark.parametrize("when", ["while starting", "after its trio handler"])
def test_exit_quietly_on_sigterm(tmp_path, when):
    """A Python child stopped outside its own signal handling exits 0, not -15."""
    script = tmp_path / "quiet.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys, time, trio
        from emulator.supervise import exit_quietly_on_sigterm
        exit_quietly_on_sigterm()
        if {when == "after its trio handler"!r}:
            async def main():
                with trio.open_signal_receiver(signal.SIGTERM):
                    pass  # handled here while open; restored to the quiet handler after
            trio.run(main)
        print("up", flush=True)
        time.sleep(30)
        """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
