"""Which coroutine runs an app of a given ``kind`` (the scenario's ``[[apps]] kind = ...``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nodes import app_socket
from nodes.entanglement.pairs import shell as pairs
from nodes.entanglement.teleport import shell as teleport
from nodes.qkd.bb84 import shell as bb84
from nodes.qkd.bbm92 import shell as bbm92

AppRunner = Callable[..., Awaitable[list[dict]]]

APPS: dict[str, AppRunner] = {
    "qkd.bb84": bb84.run,
    "entanglement.pairs": pairs.run,
    "entanglement.repeater": pairs.run,
    "teleport": teleport.run,
    "qkd.bbm92": bbm92.run,
    "external": app_socket.run_external,
}


def app_runner(kind: str) -> AppRunner:
    return APPS[kind]
