"""Which coroutine runs an app of a given ``kind`` (the scenario's ``[[apps]] kind = ...``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nodes import app_socket
from nodes.entanglement import bbm92, pairs, teleport
from nodes.qkd import bb84

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
