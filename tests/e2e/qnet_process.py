"""Helpers for end-to-end tests: run ``qnet`` as a real subprocess and find its children."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HAVE_MOSQUITTO = shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


def descendants(pid: int) -> set[int]:
    """PIDs of every live descendant of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.add(child)
            stack.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]) != "Z"
    except OSError:
        return False


def left_behind(run_dir: Path) -> set[int]:
    """Live processes started with a config in ``run_dir`` (every child of the run is)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(run_dir).encode() in (entry / "cmdline").read_bytes():
                found.add(int(entry.name))
        except OSError:
            continue
    return {pid for pid in found if alive(pid)}


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if alive(p)}
        if not left:
            return set()
        time.sleep(0.05)
    return {p for p in pids if alive(p)}


def _default_sigint() -> None:
    # a child of a non-interactive shell's background job inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_qnet(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "emulator", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


@contextlib.contextmanager
def running_qnet(*args: str) -> Iterator[subprocess.Popen]:
    """``qnet`` started in the background; killed and reaped when the block ends."""
    process = start_qnet(*args)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def run_qnet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    process = start_qnet(*args)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=15)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)
