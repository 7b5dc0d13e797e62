"""The OpenAPI 3.1 document of the KME, built from the app's routes and the spec's Structs.

Served at ``/api/v1/openapi.json`` and kept in the repo as ``docs/etsi014-openapi.json``
(``python -m nodes.services.kme.openapi > docs/etsi014-openapi.json``; a test checks they match).
"""

from __future__ import annotations

import json
import sys
from functools import cache

import msgspec

from nodes.services.kme.app import ROUTES
from nodes.services.kme.models import Error, KeyContainer, KeyIds, KeyRequest, Status

_SUMMARIES = {
    "get_status": "Get status: the key pool between this KME and the slave SAE's KME",
    "get_key": "Get key: keys for the calling (master) SAE to share with the slave SAE",
    "get_key_with_key_ids": "Get key with key IDs: the keys the master SAE shares with the "
                            "calling (slave) SAE",
}
_RESPONSE = {"get_status": "Status", "get_key": "KeyContainer",
             "get_key_with_key_ids": "KeyContainer"}
_BODY = {"get_key": "KeyRequest", "get_key_with_key_ids": "KeyIds"}
_QUERY = {
    ("get_key", "GET"): [("number", "integer", "number of keys (default 1)"),
                         ("size", "integer", "key size in bits (default key_size)")],
    ("get_key_with_key_ids", "GET"): [("key_ID", "string", "a key ID (may be repeated)")],
}
_ERRORS = {"400": "Bad request format", "401": "Unauthorized", "503": "Error on server side"}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@cache
def document() -> dict:
    _, components = msgspec.json.schema_components(
        [Status, KeyRequest, KeyContainer, KeyIds, Error],
        ref_template="#/components/schemas/{name}")
    paths: dict[str, dict] = {}
    for path, methods, operation in ROUTES:
        sae = path.split("{")[1].split("}")[0]
        for method in methods:
            parameters = [{"name": sae, "in": "path", "required": True,
                           "schema": {"type": "string"}}]
            parameters += [{"name": n, "in": "query", "required": False, "description": d,
                            "schema": {"type": t}} for n, t, d in _QUERY.get((operation, method),
                                                                             [])]
            op = {"operationId": f"{operation}_{method.lower()}", "summary": _SUMMARIES[operation],
                  "parameters": parameters,
                  "responses": {"200": _json(_ref(_RESPONSE[operation]), "OK"),
                                **{code: _json(_ref("Error"), text)
                                   for code, text in _ERRORS.items()}}}
            if method == "POST":
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": _ref(_BODY[operation])}}}
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "ETSI GS QKD 014 key delivery API (qnet KME)", "version": "1.1.1",
                 "description": "REST-based key delivery over HTTPS with mutual TLS; the "
                                "calling SAE is the CN of its client certificate."},
        "paths": paths,
        "components": {"schemas": components},
    }


@cache
def document_bytes() -> bytes:
    return (json.dumps(document(), indent=2, sort_keys=True) + "\n").encode()


if __name__ == "__main__":
    sys.stdout.buffer.write(document_bytes())
