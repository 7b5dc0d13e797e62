"""The one supervisor of a run's child processes (broker, daemon, nodes, relays), like trio's
``run_process``: started with a readiness handshake, stopped with SIGTERM, a grace period and
SIGKILL, and always reaped.

``open_supervisor()`` is a context manager around a nursery. ``await sup.start(child)`` launches
the process (output to its own log, a fresh ready file), waits until it is ready (its ready
file was written by that very process, or its ``ready_probe`` passed) and returns. Each child is
then watched: if it exits while the run still wants it, its restart policy decides between a
restart (same argv and config, fresh ready file, after a backoff) and ``ChildFailed`` (with the
log tail), which cancels the context's body (or, with ``raise_failures=False``, is recorded in
``failures`` and sets ``failed``, so the caller can still collect what the others report).
Leaving the context stops the children tier by tier, highest tier first (the orchestrator:
nodes, relays, daemon, broker, so nobody loses what it depends on while it shuts down), each
with SIGTERM, grace, SIGKILL and a wait. Once ready, a child is stopped only this way: an
outer cancellation (Ctrl-C) does not reach its watcher, so the order holds then too.

Every child dies with the supervisor process, even on ``kill -9``: it is spawned from the main
thread with ``PR_SET_PDEATHSIG`` = SIGKILL (Linux; the signal follows the thread that forked
it, so the spawn must not happen in a worker thread, as ``trio.lowlevel.open_process`` does).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import trio

__all__ = [
    "Child",
    "ChildFailed",
    "ChildProcess",
    "Restart",
    "Supervisor",
    "exit_quietly_on_sigterm",
    "open_supervisor",
    "running",
    "pid_alive",
    "watch_parent",
]

TERMINATE_GRACE_S = 3.0
READY_POLL_S = 0.01
_PR_SET_PDEATHSIG = 1
_CLONE_NEWNET = 0x40000000
_CLONE_NEWPID = 0x20000000
_libc = ctypes.CDLL(None, use_errno=True)
log = logging.getLogger("qnet.supervise")


class ChildFailed(Exception):
    """A child process exited while the run still needed it (or never became ready)."""

    def __init__(self, child: Child, reason: str) -> None:
        super().__init__(f"{child.name} ({child.role}) {reason}")
        self.child = child
        self.reason = reason


@dataclass(frozen=True)
class Restart:
    """Restart policy: ``never``, or ``on-failure`` up to ``max_restarts`` times after
    ``backoff_s`` seconds (doubling each time), for a child that exits or fails to get ready."""

    mode: Literal["never", "on-failure"] = "never"
    max_restarts: int = 0
    backoff_s: float = 0.5


NEVER = Restart()


class ChildProcess:
    """A running child: its ``subprocess.Popen`` and a pidfd to wait on it without threads."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._pidfd: int | None = os.pidfd_open(popen.pid)
        self._wait_lock = trio.Lock()

    @property
    def returncode(self) -> int | None:
        """Exit code (negative: killed by that signal), None while it runs; reaps if exited."""
        return self.popen.poll()

    async def wait(self) -> int:
        """Wait for the exit and reap the process; return its exit code."""
        async with self._wait_lock:
            while self.popen.poll() is None:
                assert self._pidfd is not None
                await trio.lowlevel.wait_readable(self._pidfd)
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        return self.popen.returncode

    def send_signal(self, signum: int) -> None:
        """Signal the process unless it has been reaped (Popen checks, so no pid reuse)."""
        self.popen.send_signal(signum)


@dataclass
class Child:
    """One child process of a run and what the supervisor learned about it."""

    name: str
    role: str
    argv: list[str]
    log_path: Path
    ready_file: Path | None = None  # the child writes it (atomically) once it is ready
    ready_probe: Callable[[Child], Awaitable[None]] | None = None  # or this returns
    restart: Restart = NEVER
    tier: int = 0  # stop order: higher tiers are stopped first
    env: dict[str, str] | None = None
    process: ChildProcess | None = None
    ready: dict = field(default_factory=dict)
    exit_code: int | None = None
    exits: list[int] = field(default_factory=list)  # every exit code, restarts included
    restarts: int = 0
    expected_exit: bool = False  # set when the run asked it to stop
    on_ready: Callable[[Child], None] | None = None  # called each time it is ready (restarts)
    netns: str | None = None  # network namespace to start in (/proc/<pid>/ns/net; --netns)
    pidns: str | None = None  # PID namespace of its children (/proc/<pid>/ns/pid; --netns)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _die_with_parent(parent: int, namespaces: list[tuple[int, int]] = ()) -> None:
    """In the forked child, before exec: SIGKILL when the spawning thread dies, and SIGINT
    back to its default (a background shell job's children inherit it ignored); enter the
    namespaces (fd, CLONE_NEW* kind) if given."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    for fd, kind in namespaces:
        if _libc.setns(fd, kind) != 0:
            os._exit(126)


def _spawn(child: Child) -> ChildProcess:
    """Start ``child`` from this (the main) thread: own session, log file, pdeathsig."""
    if child.ready_file is not None:
        child.ready_file.unlink(missing_ok=True)  # only this process's ready file counts
    child.log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(child.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    parent = os.getpid()
    namespaces = [(os.open(path, os.O_RDONLY | os.O_CLOEXEC), kind)
                  for path, kind in ((child.netns, _CLONE_NEWNET), (child.pidns, _CLONE_NEWPID))
                  if path is not None]
    try:
        popen = subprocess.Popen(
            child.argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
            start_new_session=True,  # Ctrl-C reaches the orchestrator only; it ends the children
            env={**os.environ, **(child.env or {})},
            preexec_fn=lambda: _die_with_parent(parent, namespaces),
        )
    finally:
        os.close(log_fd)
        for fd, _ in namespaces:
            os.close(fd)
    return ChildProcess(popen)


async def terminate(process: ChildProcess, grace_s: float) -> None:
    """SIGTERM, up to ``grace_s`` for the exit, then SIGKILL; always reaps. Shielded."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(grace_s):
                await process.wait()
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
        await process.wait()


async def _read_ready_file(child: Child) -> str | None:
    """Wait for the child's ready file; None when read, else why it cannot be trusted."""
    assert child.process is not None and child.ready_file is not None
    while True:
        try:
            info = json.loads(child.ready_file.read_text())
        except FileNotFoundError:
            await trio.sleep(READY_POLL_S)
            continue
        except (OSError, ValueError) as exc:
            return f"wrote an unreadable ready file {child.ready_file} ({exc})"
        if not isinstance(info, dict) or info.get("pid") != child.process.pid:
            return (f"ready file {child.ready_file} is not from this process "
                    f"(pid {child.process.pid})")
        child.ready = info
        return None


async def _wait_ready(child: Child, timeout: float) -> None:
    """Return once ``child`` is ready; ChildFailed if it exits first or the timeout passes."""
    process = child.process
    assert process is not None
    if child.ready_file is None and child.ready_probe is None:
        return
    outcome: list[str] = []
    async with trio.open_nursery() as nursery:

        async def exited() -> None:
            code = await process.wait()
            outcome.append(f"exited with code {code} before it was ready")
            nursery.cancel_scope.cancel()

        async def ready() -> None:
            with trio.move_on_after(timeout):
                problem = None
                if child.ready_file is not None:
                    problem = await _read_ready_file(child)
                if problem is None and child.ready_probe is not None:
                    try:
                        await child.ready_probe(child)
                    except Exception as exc:  # the probe's own error says why
                        problem = f"failed its readiness check: {exc}"
                outcome.append(problem or "ready")
            if not outcome:
                outcome.append(f"was not ready within {timeout:g} s")
            nursery.cancel_scope.cancel()

        nursery.start_soon(exited)
        nursery.start_soon(ready)
    if outcome[0] != "ready":
        child.exit_code = process.returncode
        raise ChildFailed(child, outcome[0])


class Supervisor:
    """Starts, watches, restarts and stops children; made by ``open_supervisor``."""

    def __init__(self, nursery: trio.Nursery, grace_s: float, raise_failures: bool) -> None:
        self._nursery = nursery
        self.grace_s = grace_s
        self.raise_failures = raise_failures
        self.children: list[Child] = []
        self.stopping = trio.Event()
        self.failures: list[ChildFailed] = []  # when not raised: children that died, in order
        self.failed = trio.Event()  # set at the first of them
        self._failure_added = trio.Event()  # set (and replaced) at each of them
        self._watches: list[trio.CancelScope] = []  # shielded: only stop_all ends them

    async def start(self, child: Child, *, ready_timeout: float = 15.0) -> Child:
        """Launch ``child`` and return once it is ready (restarting it per its policy)."""
        self.children.append(child)
        return await self._nursery.start(self._supervise, child, ready_timeout)

    async def start_all(self, children: list[Child], *, ready_timeout: float = 15.0) -> None:
        """Start children concurrently; return when all are ready."""
        async with trio.open_nursery() as starting:
            for child in children:
                starting.start_soon(partial(self.start, child, ready_timeout=ready_timeout))

    def expect_exits(self) -> None:
        """From now on a child that exits is not a failure (the run told them to finish)."""
        for child in self.children:
            child.expected_exit = True

    async def wait_exits(self, children: list[Child], timeout: float) -> None:
        """Give ``children`` (told to finish) up to ``timeout`` s to exit on their own, so
        none is signalled while its interpreter shuts down (it would die by the signal)."""
        with trio.move_on_after(timeout):
            for child in children:
                if child.process is not None:
                    await child.process.wait()

    async def stop_all(self) -> None:
        """Stop every child, highest tier first, each tier concurrently. Shielded."""
        self.stopping.set()
        self.expect_exits()
        with trio.CancelScope(shield=True):
            for tier in sorted({c.tier for c in self.children}, reverse=True):
                async with trio.open_nursery() as nursery:
                    for child in self.children:
                        if child.tier == tier and child.process is not None:
                            nursery.start_soon(terminate, child.process, self.grace_s)
        for watch in self._watches:
            watch.cancel()

    def root_failure(self) -> ChildFailed | None:
        """The failure to report: the first of the lowest tier (a node that lost its daemon
        died of the daemon's failure, not of its own)."""
        return min(self.failures, key=lambda f: f.child.tier, default=None)

    async def settle_failures(self, timeout_s: float) -> None:
        """After the first failure, wait up to ``timeout_s`` for one in a lower tier: a node
        exits as soon as its daemon connection closes, often before the daemon is reaped. A
        child killed by a signal died of that, not of what it depends on: no wait then."""
        first = self.failures[0].child
        if first.exit_code is not None and first.exit_code < 0:
            return
        with trio.move_on_after(timeout_s):
            while not any(f.child.tier < self.failures[0].child.tier for f in self.failures):
                await self._failure_added.wait()

    def _may_restart(self, child: Child) -> bool:
        policy = child.restart
        return (policy.mode == "on-failure" and child.restarts < policy.max_restarts
                and not child.expected_exit and not self.stopping.is_set())

    async def _backoff(self, child: Child) -> bool:
        """Wait before a restart; False if the supervisor began stopping meanwhile."""
        delay = child.restart.backoff_s * 2 ** child.restarts
        child.restarts += 1
        log.warning("%s exited with code %s; restart %d of %d in %.2f s", child.name,
                    child.exit_code, child.restarts, child.restart.max_restarts, delay)
        with trio.move_on_after(delay):
            await self.stopping.wait()
        return not self.stopping.is_set()

    async def _supervise(self, child: Child, ready_timeout: float,
                         task_status: trio.TaskStatus[Child] = trio.TASK_STATUS_IGNORED) -> None:
        """Start ``child`` (cancellable while it starts), then watch it: once it is ready only
        the supervisor stops it, in tier order, so an outer cancel cannot stop it early."""
        started = False
        try:
            await self._until_ready(child, ready_timeout)  # ChildFailed: to the caller
            task_status.started(child)
            started = True
            with trio.CancelScope(shield=True) as watch:
                self._watches.append(watch)
                await self._watch(child, ready_timeout)
        except ChildFailed as failure:
            if not started or self.raise_failures:
                raise
            self.failures.append(failure)
            self.failed.set()
            self._failure_added.set()
            self._failure_added = trio.Event()
        finally:
            if child.process is not None:
                await terminate(child.process, self.grace_s)
                if child.exit_code is None:
                    child.exit_code = child.process.returncode
                    child.exits.append(child.exit_code)

    async def _until_ready(self, child: Child, ready_timeout: float) -> None:
        """Spawn ``child`` and wait until it is ready, restarting it per its policy."""
        while True:
            if self.stopping.is_set():
                raise ChildFailed(child, "was stopped before it was ready")
            child.process = process = _spawn(child)
            child.exit_code = None
            try:
                await _wait_ready(child, ready_timeout)
            except ChildFailed:
                await terminate(process, self.grace_s)
                child.exit_code = process.returncode
                child.exits.append(child.exit_code)
                if self._may_restart(child) and await self._backoff(child):
                    continue
                raise
            if child.on_ready is not None:
                child.on_ready(child)
            return

    async def _watch(self, child: Child, ready_timeout: float) -> None:
        """Wait for exits; restart per the policy; ChildFailed on an unexpected exit."""
        while True:
            assert child.process is not None
            child.exit_code = await child.process.wait()
            child.exits.append(child.exit_code)
            if child.expected_exit:
                return
            if self._may_restart(child) and await self._backoff(child):
                await self._until_ready(child, ready_timeout)
                continue
            if child.expected_exit:
                return
            raise ChildFailed(child, f"exited unexpectedly with code {child.exit_code}")


@asynccontextmanager
async def running(child: Child, *, ready_timeout: float = 15.0,
                  grace_s: float = TERMINATE_GRACE_S) -> AsyncIterator[Child]:
    """One child for the duration of the context, without a watcher task (so exceptions of
    the body are not wrapped in a group): ready on entry (ChildFailed otherwise), stopped and
    reaped on exit. For a helper process such as a test's or a benchmark's broker."""
    child.process = _spawn(child)
    try:
        await _wait_ready(child, ready_timeout)
        yield child
    finally:
        await terminate(child.process, grace_s)
        child.exit_code = child.process.returncode
        child.exits.append(child.exit_code)


@asynccontextmanager
async def open_supervisor(grace_s: float = TERMINATE_GRACE_S, *,
                          raise_failures: bool = True) -> AsyncIterator[Supervisor]:
    """A supervisor whose children all are stopped and reaped when the context ends.

    A child that dies after it was ready raises ``ChildFailed`` into the context (cancelling
    its body), or with ``raise_failures=False`` is recorded in ``failures`` and ``failed``."""
    async with trio.open_nursery() as nursery:
        supervisor = Supervisor(nursery, grace_s, raise_failures)
        try:
            yield supervisor
        finally:
            await supervisor.stop_all()
            nursery.cancel_scope.cancel()


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


def exit_quietly_on_sigterm() -> None:
    """In a child: SIGTERM outside the child's own trio signal handling (while it starts up or
    after it has finished) exits 0 at once instead of dying by the signal (-15)."""

    def handler(signum: int, frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, RuntimeError):
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, handler)
