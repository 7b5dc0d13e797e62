"""A small blocking ETSI GS QKD 014 client (stdlib ``ssl`` + ``http.client``), one SAE.

Keeps one TLS connection open (HTTP keep-alive, so the TLS session is reused) and reconnects
when the server closed it. For tests, benchmarks and example SAEs; any HTTPS client works.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from pathlib import Path


class KmeHttpError(Exception):
    def __init__(self, status: int, body: dict) -> None:
        super().__init__(f"{status}: {body.get('message', body)}")
        self.status, self.body = status, body


def client_context(cert: Path | str, key: Path | str, ca: Path | str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


class KmeClient:
    """``KmeClient(url, context)``: ``status``, ``enc_keys``, ``dec_keys`` return the JSON."""

    def __init__(self, url: str, context: ssl.SSLContext, timeout: float = 10.0) -> None:
        rest = url.removeprefix("https://")
        host, _, port = rest.partition(":")
        self.host, self.port = host, int(port or 443)
        self.context = context
        self.timeout = timeout
        self._conn: http.client.HTTPSConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                         context=self.context)
            try:
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
                return response.status, json.loads(data) if data else {}
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()  # the server closed a kept-alive connection: once more, fresh
                if attempt:
                    raise
            except Exception:
                self.close()  # the connection's state is unknown: never reuse it
                raise
        raise AssertionError("unreachable")

    def _ok(self, status: int, body: dict) -> dict:
        if status != 200:
            raise KmeHttpError(status, body)
        return body

    def status(self, slave: str) -> dict:
        return self._ok(*self.request("GET", f"/api/v1/keys/{slave}/status"))

    def enc_keys(self, slave: str, number: int = 1, size: int | None = None,
                 post: bool = False, also: list[str] | None = None) -> list[tuple[str, bytes]]:
        """Keys shared with ``slave`` (and the additional slaves ``also``: POST only)."""
        if post or also:
            body = {"number": number, **({"size": size} if size else {}),
                    **({"additional_slave_SAE_IDs": also} if also else {})}
            got = self.request("POST", f"/api/v1/keys/{slave}/enc_keys", json.dumps(body).encode())
        else:
            query = f"number={number}" + (f"&size={size}" if size else "")
            got = self.request("GET", f"/api/v1/keys/{slave}/enc_keys?{query}")
        return [(k["key_ID"], base64.b64decode(k["key"])) for k in self._ok(*got)["keys"]]

    def dec_keys(self, master: str, ids: list[str], post: bool = True) -> list[tuple[str, bytes]]:
        if post:
            body = json.dumps({"key_IDs": [{"key_ID": k} for k in ids]}).encode()
            got = self.request("POST", f"/api/v1/keys/{master}/dec_keys", body)
        else:
            query = "&".join(f"key_ID={k}" for k in ids)
            got = self.request("GET", f"/api/v1/keys/{master}/dec_keys?{query}")
        return [(k["key_ID"], base64.b64decode(k["key"])) for k in self._ok(*got)["keys"]]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
