"""The ETSI GS QKD 014 REST interface of a KME as an ASGI app (Starlette, runs on anyio/trio).

Routes are exactly the spec's (``ROUTES``); the calling SAE is the CN of its TLS client
certificate, which the server shell puts in ``scope["extensions"]["tls"]["sae_id"]``. A bad
query, body, size or number is a 400 with ``{message, details}``; nothing a client sends can
fail another client's request. ``GET /api/v1/openapi.json`` serves the OpenAPI document.
"""

from __future__ import annotations

import logging

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nodes.services.kme.models import Error, KeyIds, KeyRequest, encoder
from nodes.services.kme.service import Kme, KmeError

log = logging.getLogger("qnet.kme.http")

MAX_BODY = 64 * 1024
BASE = "/api/v1/keys"
# (path, methods, operation): the interface, also what the OpenAPI document is built from
ROUTES = [
    (BASE + "/{slave_SAE_ID}/status", ["GET"], "get_status"),
    (BASE + "/{slave_SAE_ID}/enc_keys", ["GET", "POST"], "get_key"),
    (BASE + "/{master_SAE_ID}/dec_keys", ["GET", "POST"], "get_key_with_key_ids"),
]


def _json(status: int, payload: msgspec.Struct) -> Response:
    return Response(encoder.encode(payload), status_code=status, media_type="application/json")


def _error(exc: KmeError) -> Response:
    return _json(exc.status, Error(exc.message, exc.details))


def _caller(request: Request) -> str:
    sae = request.scope.get("extensions", {}).get("tls", {}).get("sae_id")
    if not sae:
        raise KmeError(401, "no SAE certificate on this connection")
    return sae


def _query_int(request: Request, name: str) -> int | None:
    values = request.query_params.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise KmeError(400, f"query parameter {name} given twice")
    try:
        return int(values[0])
    except ValueError:
        raise KmeError(400, f"query parameter {name} is not an integer",
                       value=values[0][:32]) from None


def _only(request: Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise KmeError(400, "unknown query parameters", parameters=unknown[:8])


async def _body(request: Request, kind: type):
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise KmeError(400, f"request body over {MAX_BODY} bytes")
    try:
        return msgspec.json.decode(bytes(body), type=kind)
    except msgspec.ValidationError as exc:
        raise KmeError(400, "invalid request body", reason=str(exc)) from None
    except msgspec.DecodeError as exc:
        raise KmeError(400, "malformed JSON", reason=str(exc)) from None


def create_app(kme: Kme) -> Starlette:
    """The ASGI app of ``kme``."""

    def handler(fn):
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except KmeError as exc:
                kme.counters[f"http_{exc.status}"] += 1
                return _error(exc)
            except Exception:  # a bug must not take the server down for the others
                log.exception("KME request %s %s failed", request.method, request.url.path)
                kme.counters["http_503"] += 1
                return _error(KmeError(503, "internal error"))
        return endpoint

    async def get_status(request: Request) -> Response:
        _only(request, set())
        status = await kme.status(_caller(request), request.path_params["slave_SAE_ID"])
        return _json(200, status)

    async def get_key(request: Request) -> Response:
        caller = _caller(request)
        if request.method == "POST":
            _only(request, set())
            key_request = await _body(request, KeyRequest)
        else:
            _only(request, {"number", "size"})
            number, size = _query_int(request, "number"), _query_int(request, "size")
            try:
                key_request = msgspec.convert({"number": number, "size": size}, KeyRequest)
            except msgspec.ValidationError as exc:
                raise KmeError(400, "invalid query", reason=str(exc)) from None
        container = await kme.enc_keys(caller, request.path_params["slave_SAE_ID"], key_request)
        return _json(200, container)

    async def get_key_with_key_ids(request: Request) -> Response:
        caller = _caller(request)
        if request.method == "POST":
            _only(request, set())
            ids = [item.key_ID for item in (await _body(request, KeyIds)).key_IDs]
        else:
            _only(request, {"key_ID"})
            ids = request.query_params.getlist("key_ID")
            if not ids:
                raise KmeError(400, "query parameter key_ID missing")
        container = await kme.dec_keys(caller, request.path_params["master_SAE_ID"], ids)
        return _json(200, container)

    async def get_openapi(request: Request) -> Response:
        from nodes.services.kme.openapi import document_bytes  # built from ROUTES, above

        return Response(document_bytes(), media_type="application/json")

    operations = {"get_status": get_status, "get_key": get_key,
                  "get_key_with_key_ids": get_key_with_key_ids}
    routes = [Route(path, handler(operations[op]), methods=methods) for path, methods, op in ROUTES]
    routes.append(Route("/api/v1/openapi.json", get_openapi, methods=["GET"]))
    return Starlette(routes=routes)
