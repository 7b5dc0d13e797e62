"""The node's ETSI GS QKD 014 key service: spec models, KME logic, peer KME protocol, ASGI
app, mutual-TLS server shell, and a small client (see docs/kms.md)."""

from nodes.services.kme.app import ROUTES, create_app
from nodes.services.kme.peer_link import PeerLink, PeerUnavailable
from nodes.services.kme.server import serve_kme, server_context
from nodes.services.kme.service import Kme, KmeError, KmeOptions, kme_id

__all__ = ["ROUTES", "Kme", "KmeError", "KmeOptions", "PeerLink", "PeerUnavailable",
           "create_app", "kme_id", "serve_kme", "server_context"]
