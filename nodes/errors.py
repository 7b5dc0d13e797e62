"""Who is at fault: errors a peer caused (remote) versus our own bugs (local).

A ``RemoteProtocolError`` means the other side sent something wrong (malformed, out of order,
inconsistent, unauthenticated); it ends the block or the session it concerns — counted and
published as an event — never the node process. Anything else raised in a core is a local bug
and fails loudly. (After h11's ``LocalProtocolError`` / ``RemoteProtocolError``.)
"""

from __future__ import annotations


class RemoteProtocolError(Exception):
    """The peer broke the protocol; ``scope`` says what it ends ("block", "session", "frame")."""

    scope = "session"

    def __init__(self, message: str, *, peer: str | None = None) -> None:
        super().__init__(message)
        self.peer = peer


class MalformedMessage(RemoteProtocolError):
    """A frame that does not decode as any message of the protocol (ends the session)."""


class UnexpectedMessage(RemoteProtocolError):
    """A well-formed message that the protocol does not allow here (ends the session)."""


class BlockRejected(RemoteProtocolError):
    """The peer's data for one block is inconsistent (lengths, indices); ends that block only."""

    scope = "block"


class PeerAuthenticationError(RemoteProtocolError):
    """A channel hello or frame that fails authentication (the connection is dropped)."""

    scope = "frame"


class PeerClosed(RemoteProtocolError, ConnectionError):
    """The peer closed or reset the channel in the middle of a session (it died, or quit).

    Also a ``ConnectionError``, so code that only cares that the channel is gone still works;
    as a remote error it ends the session and the app returns its result so far."""
