"""Start, watch and end child processes, the way trio's ``run_process`` does.

``start_child`` is used with ``nursery.start``: it launches the process (its output to its own
log file), waits for its ready file, and hands back a ``Child``. The task then waits for the
process; if it exits while the run still wants it, ``ChildFailed`` (with the log tail) is raised
into the nursery, which cancels the whole run. On cancellation the child gets SIGTERM, a grace
period, then SIGKILL, and is always waited for — leaving the nursery reaps every child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import trio

TERMINATE_GRACE_S = 3.0


class ChildFailed(Exception):
    """A child process exited while the run still needed it (or never became ready)."""

    def __init__(self, child: Child, reason: str) -> None:
        super().__init__(f"{child.name} ({child.role}) {reason}")
        self.child = child
        self.reason = reason


@dataclass
class Child:
    name: str
    role: str
    argv: list[str]
    log_path: Path
    ready_file: Path | None = None
    process: trio.Process | None = None
    ready: dict = field(default_factory=dict)
    exit_code: int | None = None
    expected_exit: bool = False  # set when the run asked it to stop

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


async def _terminate(process: trio.Process) -> None:
    """SIGTERM, wait up to the grace period, then SIGKILL; always wait for the exit."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            with trio.move_on_after(TERMINATE_GRACE_S):
                await process.wait()
            if process.returncode is None:
                try:
                    process.kill()
                except ProcessLookupError:
                    pass
        await process.wait()


async def _wait_ready(child: Child, timeout: float) -> None:
    assert child.process is not None and child.ready_file is not None
    deadline = trio.current_time() + timeout
    while True:
        if child.ready_file.exists():
            child.ready = json.loads(child.ready_file.read_text())
            return
        if child.process.poll() is not None:
            child.exit_code = child.process.returncode
            raise ChildFailed(child, f"exited with code {child.exit_code} before it was ready")
        if trio.current_time() > deadline:
            raise ChildFailed(child, f"was not ready within {timeout:g} s")
        await trio.sleep(0.01)


async def start_child(
    child: Child,
    *,
    ready_timeout: float = 15.0,
    env: dict[str, str] | None = None,
    task_status: trio.TaskStatus[Child] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``child`` until cancelled; ``nursery.start`` returns once it is ready."""
    log = open(child.log_path, "ab", buffering=0)
    try:
        child.process = await trio.lowlevel.open_process(
            child.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the orchestrator only; it ends the children
            env={**os.environ, **(env or {})},
        )
    finally:
        log.close()
    try:
        if child.ready_file is not None:
            await _wait_ready(child, ready_timeout)
        task_status.started(child)
        await child.process.wait()
        child.exit_code = child.process.returncode
        if not child.expected_exit:
            raise ChildFailed(child, f"exited unexpectedly with code {child.exit_code}")
    finally:
        await _terminate(child.process)
        child.exit_code = child.process.returncode


def pid_alive(pid: int) -> bool:
    """True if a process with ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


async def watch_parent(poll_s: float = 0.5) -> None:
    """Return when this process's parent has gone (so a child never outlives a killed run)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await trio.sleep(poll_s)
