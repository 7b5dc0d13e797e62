"""Two network namespaces joined by a veth pair, made by hand for tests that need real IP
between two ends without ``qnet run --netns`` (deleted on exit, whatever happened)."""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import socket
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass

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
def veth_pair(mtu: int = 1500):
    """``qnt-<random>-a`` / ``-b`` with 10.<r>.<r>.1 and .2 on a veth; removed in a finally."""
    tag = secrets.token_hex(3)
    octets = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}"
    pair = VethPair((f"qnt-{tag}-a", f"qnt-{tag}-b"), (f"{octets}.1", f"{octets}.2"),
                    (f"qv{tag}a", f"qv{tag}b"))
    try:
        for name in pair.names:
            ip("netns", "add", name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("link", "add", pair.links[0], "mtu", str(mtu), "type", "veth", "peer", "name",
           pair.links[1], "mtu", str(mtu))
        for name, link, address in zip(pair.names, pair.links, pair.addresses):
            ip("link", "set", link, "netns", name)
            ip("-n", name, "address", "add", f"{address}/24", "dev", link)
            ip("-n", name, "link", "set", link, "up")
        yield pair
    finally:
        for name in pair.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", pair.links[0]], capture_output=True, timeout=10)


def pids_in(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True,
                         timeout=10).stdout
    return [int(p) for p in out.split()]


def listen_in(namespace: str) -> socket.socket:
    """A TCP listener on 127.0.0.1 inside ``namespace`` (this thread enters it and returns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{namespace}") as there:
        if libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into " + namespace)
        try:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        finally:
            if libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    return sock


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
