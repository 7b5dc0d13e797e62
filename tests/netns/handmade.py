"""Two network namespaces joined by a veth pair, made by hand for tests that need real IP
between two ends without ``qnet run --netns`` (deleted on exit, whatever happened)."""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import socket
import subprocess
import sys
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

CLONE_NEWNET = 0x40000000
NEEDS_ROOT = "needs root (network namespaces)"


def missing(*programs: str) -> str | None:
    """Why a namespace test cannot run here (None when it can)."""
    if os.geteuid() != 0:
        return NEEDS_ROOT
    absent = [p for p in ("ip", *programs) if shutil.which(p) is None]
    return f"needs {', '.join(absent)} (Debian packages)" if absent else None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class VethPair:
    names: tuple[str, str]  # namespaces
    addresses: tuple[str, str]  # IPv4 of each end (a /24)
    links: tuple[str, str]  # interface names


@contextmanager
def namespaces(count: int = 2):
    """``count`` empty named namespaces ``qnt-<random>-<i>`` with lo up; deleted in a finally."""
    tag = secrets.token_hex(3)
    names = [f"qnt-{tag}-{i}" for i in range(count)]
    try:
        for name in names:
            ip("netns", "add", name)
            ip("-n", name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@contextmanager
def veth_pair(mtu: int = 1500):
    """Two namespaces with 10.<r>.<r>.1 and .2 on a veth between them (created straight
    into the namespaces: nothing ever exists in the root namespace)."""
    octets = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
    links = ("qv0", "qv1")
    with namespaces(2) as names:
        pair = VethPair(tuple(names), (f"{octets}.1", f"{octets}.2"), links)
        ip("link", "add", links[0], "netns", names[0], "mtu", str(mtu), "type", "veth",
           "peer", "name", links[1], "netns", names[1], "mtu", str(mtu))
        for name, link, address in zip(pair.names, links, pair.addresses):
            ip("-n", name, "address", "add", f"{address}/24", "dev", link)
            ip("-n", name, "link", "set", link, "up")
        yield pair


def wire_config(names: list[str], *, delay_s: float = 0.0, loss: float = 0.0,
                rate_bps: float | None = None, capture: str | None = None, mtu: int = 1500):
    """A shaper config (``emulator.netns.shaper.WireConfig``) joining two named namespaces
    with 10.9.0.1/24 (first) and 10.9.0.2/24 (second), both directions alike."""
    from emulator.child_config import Direction
    from emulator.netns.shaper import WireConfig, WireEnd

    def end(i: int) -> WireEnd:
        return WireEnd(node=f"n{i}", netns=f"/run/netns/{names[i]}", ifname=f"q-n{1 - i}",
                       addr4=f"10.9.0.{i + 1}/24", addr6=f"fd00:9::{i + 1}/64", mtu=mtu)

    direction = Direction(delay_s=delay_s, loss=loss, rate_bps=rate_bps)
    return WireConfig(run_id="handmade", t0=0.0, time_scale=1.0, seed=1, name="n0-n1",
                      a=end(0), b=end(1), a_to_b=direction, b_to_a=direction,
                      capture=capture)


def pids_in(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True,
                         timeout=10).stdout
    return [int(p) for p in out.split()]


def socket_in(namespace: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """An IPv4 socket that lives in ``namespace`` (this thread enters it, then returns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{namespace}") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into " + namespace)
        try:
            return socket.socket(socket.AF_INET, kind)
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")


def listen_in(namespace: str, host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP listener on ``host`` inside ``namespace``."""
    sock = socket_in(namespace)
    sock.bind((host, port))
    sock.listen()
    return sock


@asynccontextmanager
async def shaper_between(names: list[str], directory: Path, **options):
    """``python -m emulator.netns.shaper`` joining the two namespaces (``wire_config``
    options) for the duration of the block; stopped (SIGTERM) and reaped on exit."""
    from emulator.child_config import write_config
    from emulator.supervise import Child, running

    config = directory / "wire.json"
    write_config(config, wire_config(names, **options))
    child = Child("wire-n0-n1", "wire", [sys.executable, "-m", "emulator.netns.shaper",
                                         "--config", str(config), "--ready-file",
                                         str(directory / "wire.ready")],
                  directory / "wire.log", ready_file=directory / "wire.ready")
    async with running(child, ready_timeout=15) as started:
        yield started


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    async for chunk in source:
        await sink.send_all(chunk)
    await sink.send_eof()


async def forward_into(namespace: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED):
    """Serve 127.0.0.1:<p> inside ``namespace`` by connecting to 127.0.0.1:``port`` here
    (how a program in the namespace reaches a server of the test); started with <p>."""
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(
        await trio.to_thread.run_sync(listen_in, namespace)))
    async with listener, trio.open_nursery() as nursery:
        task_status.started(listener.socket.getsockname()[1])
        while True:
            inside = await listener.accept()
            outside = await trio.open_tcp_stream("127.0.0.1", port)

            async def both(inside=inside, outside=outside) -> None:
                try:
                    async with inside, outside, trio.open_nursery() as pipes:
                        pipes.start_soon(_pipe, inside, outside)
                        pipes.start_soon(_pipe, outside, inside)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # one side reset: the connection is over

            nursery.start_soon(both)
