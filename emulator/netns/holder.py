"""A node's network namespace: created by this process, held while it lives, with a way back.

Run as ``python -m emulator.netns.holder --config CONFIG.json --ready-file READY.json``
(config: ``NamespaceConfig``). It keeps a handle on the root namespace, ``unshare``s into a
new one, brings up loopback with the node's node addresses, turns on forwarding, and listens
on ``127.0.0.1:<port>`` inside it for each port in ``forward``: every connection there is
joined to ``127.0.0.1:<port>`` in the root namespace (a socket created after a ``setns`` back).
So the node's daemon and broker connections (127.0.0.1, as in the default mode) work unchanged
from inside the namespace. The ready file carries ``netns`` = ``/proc/<pid>/ns/net``: the
supervisor starts the node and its programs in it, the wires create their TAPs in it.

It holds no bind mount: when it, the node, its programs and the wires are gone, the kernel
removes the namespace. SIGTERM/SIGINT or the orchestrator's death end it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys

import msgspec
import trio

from emulator.child_config import child_arguments, read_config, write_ready
from emulator.netns.kernel import (
    CLONE_NEWNET,
    CLONE_NEWPID,
    die_with_parent,
    ip_batch,
    ns_path,
    setns,
    unshare,
    write_sysctl,
)
from emulator.supervise import exit_quietly_on_sigterm, watch_parent

log = logging.getLogger("qnet.netns")
CHUNK = 65536


class NamespaceConfig(msgspec.Struct):
    run_id: str
    node: str
    addr4: str  # node address, "10.255.0.1"
    addr6: str
    forward: list[int] = []  # 127.0.0.1 ports joined to the root namespace's 127.0.0.1


def configure_namespace(config: NamespaceConfig) -> None:
    """Loopback up with the node addresses; forwarding on; no DAD or RAs (addresses are
    usable at once); no reverse-path filter (routes to link subnets may be asymmetric)."""
    ip_batch(["link set dev lo up",
              f"address add {config.addr4}/32 dev lo",
              f"address add {config.addr6}/128 dev lo nodad"])
    for name, value in (("net.ipv4.ip_forward", "1"), ("net.ipv6.conf.all.forwarding", "1"),
                        ("net.ipv6.conf.default.accept_dad", "0"),
                        ("net.ipv6.conf.default.accept_ra", "0"),
                        ("net.ipv4.conf.all.rp_filter", "0"),
                        ("net.ipv4.conf.default.rp_filter", "0")):
        write_sysctl(name, value)


def root_socket(root_fd: int, own_fd: int) -> trio.socket.SocketType:
    """A TCP socket in the root namespace (created between two setns; no await in between)."""
    setns(root_fd)
    try:
        return trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    finally:
        setns(own_fd)


async def _copy(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while data := await source.receive_some(CHUNK):
            await sink.send_all(data)
        await sink.send_eof()


async def _join(port: int, root_fd: int, own_fd: int, inside: trio.SocketStream) -> None:
    """Join a connection made inside the namespace to 127.0.0.1:``port`` outside it."""
    sock = root_socket(root_fd, own_fd)
    try:
        await sock.connect(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        log.warning("forward %d: cannot connect outside: %s", port, exc)
        await trio.aclose_forcefully(inside)
        return
    outside = trio.SocketStream(sock)
    async with inside, outside, trio.open_nursery() as nursery:
        nursery.start_soon(_copy, inside, outside)
        nursery.start_soon(_copy, outside, inside)


def start_pid_namespace() -> int:
    """Fork the init of a new PID namespace (its pid, seen from here): it reaps orphans and
    dies with this process (PR_SET_PDEATHSIG), and when it dies the kernel kills every process
    of its namespace. Children of the node and its programs are started in it (the supervisor
    enters ``pid_for_children``), so a program's own children never outlive the run."""
    unshare(CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:  # pid 1 of the new namespace
        try:
            die_with_parent()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGTERM,
                                                      signal.SIGINT})
            while True:
                with contextlib.suppress(ChildProcessError):
                    while os.waitpid(-1, os.WNOHANG)[0] > 0:
                        pass
                signal.sigwait({signal.SIGCHLD})
        finally:
            os._exit(0)
    return pid


async def _main(config: NamespaceConfig, ready_file, init_pid: int) -> None:
    root_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    unshare(CLONE_NEWNET)
    own_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    configure_namespace(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            for port in config.forward:
                listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
                handler = functools.partial(_join, port, root_fd, own_fd)
                nursery.start_soon(trio.serve_listeners, handler, listeners)
            write_ready(ready_file, netns=ns_path(os.getpid()),
                        pidns=f"/proc/{init_pid}/ns/pid")
            log.info("node %s: namespace ready, forwarding %s", config.node, config.forward)

            async def orphaned() -> None:
                await watch_parent()
                nursery.cancel_scope.cancel()

            nursery.start_soon(orphaned)
            async for signum in signals:
                log.info("node %s: namespace holder got signal %d, ending", config.node, signum)
                nursery.cancel_scope.cancel()
                break


def main() -> None:
    exit_quietly_on_sigterm()
    args = child_arguments("qnet node namespace")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    config = read_config(args.config, NamespaceConfig)
    init_pid = start_pid_namespace()  # before trio starts any thread
    trio.run(_main, config, args.ready_file, init_pid)


if __name__ == "__main__":
    main()
