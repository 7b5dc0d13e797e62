"""Node side of an ``external`` app: serve the app socket, run the program, keep its result."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import trio

from emulator.supervise import Child, running
from nodes.app_socket import AppSocket
from nodes.apps.external.spec import ExternalApp
from nodes.sdk import NodeContext


async def run(node: NodeContext, app: ExternalApp) -> list[dict]:
    """Serve the app socket and run ``app.command`` as its own process until it exits."""
    role = "a" if node.name == app.a else "b"
    peer = app.b if role == "a" else app.a
    sock = AppSocket(node, peer, role)
    env = dict(os.environ, QNET_APP_TOKEN=sock.token, QNET_NODE=node.name, QNET_PEER=peer,
               QNET_ROLE=role)
    command = [sys.executable if part == "python" else part for part in app.command]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(sock.serve)
        env["QNET_APP_SOCKET"] = f"127.0.0.1:{port}"
        await node.clock.sleep_until(node.t_start)
        with tempfile.TemporaryDirectory(prefix="qnet-external-") as tmp:
            # spawned like every child of a run (own session, dies with this node, SIGTERM,
            # grace, SIGKILL on cancel, always reaped); its output is read back from the file
            child = Child(name=f"{node.name}-external", role="external", argv=command,
                          log_path=Path(tmp) / "output", env=env)
            async with running(child) as started:
                assert started.process is not None
                code = await started.process.wait()
            output = child.log_path.read_text(errors="replace")
        nursery.cancel_scope.cancel()
    out = output.strip().splitlines()
    entry: dict = {"section": "external", "name": f"{node.name}:{app.command[-1]}",
                   "exit_code": code}
    if out:
        try:
            last = json.loads(out[-1])
            if isinstance(last, dict):
                entry.update(last)
        except json.JSONDecodeError:
            entry["stdout_tail"] = out[-5:]
    return [entry]
