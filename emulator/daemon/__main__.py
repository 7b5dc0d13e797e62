"""``python -m emulator.daemon --config CONFIG.json --ready-file READY.json``: the quantum daemon.

Binds its TCP port, writes ``{"port": N, "pid": P}`` to the ready file, and serves until
SIGTERM or SIGINT, on which it cancels everything and exits 0.
"""

from __future__ import annotations

import logging
import signal

import trio

from emulator.child_config import DaemonConfig, child_arguments, read_config, write_ready
from emulator.daemon.server import serve
from emulator.supervise import exit_quietly_on_sigterm, watch_parent


async def run(config: DaemonConfig, ready_file) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            daemon = await nursery.start(serve, config)
            write_ready(ready_file, port=daemon.port)

            async def orphaned() -> None:
                await watch_parent()
                logging.getLogger("qnet.daemon").info("orchestrator gone: shutting down")
                nursery.cancel_scope.cancel()

            nursery.start_soon(orphaned)
            async for signum in signals:
                logging.getLogger("qnet.daemon").info("signal %d: shutting down", signum)
                nursery.cancel_scope.cancel()
                break


def main() -> None:
    exit_quietly_on_sigterm()
    args = child_arguments("qnet quantum-channel daemon")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trio.run(run, read_config(args.config, DaemonConfig), args.ready_file)


if __name__ == "__main__":
    main()
