"""The few kernel calls of ``--netns``: unshare/setns, TAP devices, ``ip -batch``.

Namespaces are never named or bind-mounted: a node's namespace exists while a process is in
it or holds it open (its holder, its node, its programs, the wires' TAP fds), so the kernel
removes it, with its interfaces, addresses and routes, when they die, however they die.
``setns`` acts on the calling thread only; every function here that switches namespace
switches back before it returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import struct
import subprocess
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    """A namespace or interface operation failed (message says which and why)."""


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise NetnsError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    """``unshare(2)``: CLONE_NEWNET moves the calling thread into a new network namespace,
    CLONE_NEWPID puts this process's future children into a new PID namespace."""
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def die_with_parent() -> None:
    """PR_SET_PDEATHSIG: SIGKILL this process when the thread that forked it ends."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def setns(fd: int, kind: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace open at ``fd`` (network by default)."""
    _check(_libc.setns(fd, kind), "setns")


def ns_path(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


@contextlib.contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body in the network namespace at ``path`` (e.g. ``/proc/<pid>/ns/net``), then
    return to the current one. Sockets and TAPs created inside stay in that namespace."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


def open_tap(name: str, mtu: int | None = None) -> int:
    """Create the non-persistent TAP ``name`` in the current namespace; return its fd
    (non-blocking). The device disappears when the fd is closed (the process dies)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        raise NetnsError(exc.errno, f"TAP {name}: {exc.strerror}") from None
    return fd


def ip_batch(commands: list[str]) -> None:
    """Run ``ip -batch -`` with ``commands`` in the current namespace (``ip`` is forked from
    this thread, so it inherits this thread's namespace); NetnsError with ip's message."""
    if not commands:
        return
    done = subprocess.run(["ip", "-batch", "-"], input="\n".join(commands) + "\n",
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(0, f"ip -batch failed: {done.stderr.strip()} (commands: "
                            f"{'; '.join(commands)})")


def write_sysctl(name: str, value: str) -> None:
    """Set a ``net.*`` sysctl of the current namespace (/proc/sys/net is per namespace)."""
    with open("/proc/sys/" + name.replace(".", "/"), "w") as handle:
        handle.write(value)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class TimerFd:
    """A one-shot CLOCK_MONOTONIC timerfd: readable at its deadline to the microsecond, where
    an epoll timeout (trio's sleeps) is rounded up to a whole millisecond."""

    def __init__(self) -> None:
        self.fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if self.fd < 0:
            _check(-1, "timerfd_create")

    def arm_after(self, seconds: float) -> None:
        """Become readable ``seconds`` from now (at least 1 ns)."""
        ns = max(1, int(seconds * 1e9))
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(ns // 1_000_000_000, ns % 1_000_000_000))
        _check(_libc.timerfd_settime(self.fd, 0, ctypes.byref(spec), None), "timerfd_settime")

    def clear(self) -> None:
        """Consume an expiry (after the fd was readable); nothing if none is pending."""
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)
