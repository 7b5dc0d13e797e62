"""What an app shell does when its peer breaks the protocol: count it, publish it, carry on.

A core raises a ``RemoteProtocolError`` subclass (``nodes.errors``); the shell catches it
(``except* RemoteProtocolError``), ends the block or session it concerns and calls
``report_group`` here (``report`` for a single error), which logs it and publishes a
``remote_protocol_error`` event. The app then returns its result so far with
``remote_errors`` counted; the node process keeps running.
"""

from __future__ import annotations

import logging

import trio

from nodes.errors import RemoteProtocolError


def leaves(group: BaseExceptionGroup) -> list[RemoteProtocolError]:
    """The remote errors of an exception group caught with ``except*`` (nesting flattened)."""
    out: list[RemoteProtocolError] = []
    for exc in group.exceptions:
        out += leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


async def report(node, app: str, errors: list[RemoteProtocolError]) -> None:
    """Log and publish each error as a ``remote_protocol_error`` event of app ``app``."""
    log = logging.getLogger(f"qnet.node.{node.name}")
    for exc in errors:
        log.warning("%s: the peer broke the protocol (%s ends the %s): %s", app,
                    type(exc).__name__, exc.scope, exc)
        with trio.CancelScope(shield=True), trio.move_on_after(2.0):
            await node.event("remote_protocol_error", app=app, error=type(exc).__name__,
                             scope=exc.scope, peer=exc.peer, message=str(exc))


async def report_group(node, app: str, group: BaseExceptionGroup) -> list[RemoteProtocolError]:
    """Report the remote errors of an ``except*`` group (see ``report``) and return them."""
    errors = leaves(group)
    await report(node, app, errors)
    return errors
