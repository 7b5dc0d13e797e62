"""HTTPS with mutual TLS for the KME: hypercorn's trio connection handler under our listener.

TLS >= 1.2, a client certificate from the run's CA required. hypercorn hands the app no
client certificate, so this shell accepts and handshakes each connection itself, reads the
SAE id (the certificate's CN), and runs hypercorn's trio ``TCPServer`` on the stream with an
app wrapper that puts the id in the ASGI TLS extension (``scope["extensions"]["tls"]``). A
failed handshake (no certificate, another CA) ends that connection only.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext

log = logging.getLogger("qnet.kme.server")

HANDSHAKE_TIMEOUT_S = 10.0


def server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """TLS >= 1.2, the KME's certificate, client certificates required from ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["http/1.1"])
    return context


def common_name(peercert: dict | None) -> str | None:
    """The CN of a certificate as ``ssl.SSLSocket.getpeercert()`` returns it."""
    for rdn in (peercert or {}).get("subject", ()):
        for attribute, value in rdn:
            if attribute == "commonName":
                return value
    return None


def _config() -> Config:
    config = Config()
    config.keep_alive_timeout = 30
    config.graceful_timeout = 1
    return config


async def serve_kme(app, context: ssl.SSLContext, host: str, port: int,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` on ``host:port`` over mutual TLS until cancelled; ``task_status``
    gets the bound port."""
    config = _config()
    worker = WorkerContext(None)
    listeners = await trio.open_tcp_listeners(port, host=host)
    counters = {"handshake_failures": 0}

    async def connection(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            counters["handshake_failures"] += 1
            if counters["handshake_failures"] == 1:
                log.warning("TLS handshake failed: %s", exc.__cause__ or exc)
            await trio.aclose_forcefully(stream)
            return
        sae = common_name(tls.getpeercert())
        info = {"sae_id": sae, "client_cert_name": f"CN={sae}", "tls_version": tls.version(),
                "cipher_suite": (tls.cipher() or ("",))[0]}

        async def with_tls(scope, receive, send) -> None:
            scope.setdefault("extensions", {})["tls"] = info
            await app(scope, receive, send)

        await TCPServer(ASGIWrapper(with_tls), config, worker, {}, tls)

    async with trio.open_nursery() as nursery:
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(connection, listeners, handler_nursery=nursery)
