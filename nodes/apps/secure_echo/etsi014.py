"""A minimal ETSI GS QKD 014 client: standard library only, one SAE, mutual TLS.

What any program on a qnet node can do with the variables qnet gives it (``QNET_KME_URL``,
``QNET_SAE_CERT``, ``QNET_SAE_KEY``, ``QNET_CA``): ``enc_keys`` as the master SAE, ``dec_keys``
as the slave. One keep-alive connection, so the TLS session is set up once.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
from urllib.parse import urlsplit


class KmeRefused(Exception):
    """The KME answered with an error status (400, 401, 503) and the spec's message."""

    def __init__(self, status: int, body: dict) -> None:
        super().__init__(f"HTTP {status}: {body.get('message', body)}")
        self.status = status
        self.body = body


class Etsi014Client:
    def __init__(self, url: str, cert: str, key: str, ca: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 443
        self.context = ssl.create_default_context(cafile=ca)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(cert, key)
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPSConnection | None = None

    @classmethod
    def from_environment(cls) -> Etsi014Client:
        env = os.environ
        return cls(env["QNET_KME_URL"], env["QNET_SAE_CERT"], env["QNET_SAE_KEY"],
                   env["QNET_CA"])

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):  # once more if the server closed the kept connection
            if self._conn is None:
                self._conn = http.client.HTTPSConnection(self.host, self.port,
                                                         timeout=self.timeout_s,
                                                         context=self.context)
            try:
                headers = {"Content-Type": "application/json"} if data is not None else {}
                self._conn.request(method, path, body=data, headers=headers)
                response = self._conn.getresponse()
                payload = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        answer = json.loads(payload) if payload else {}
        if response.status != 200:
            raise KmeRefused(response.status, answer)
        return answer

    def status(self, slave_sae: str) -> dict:
        return self._request("GET", f"/api/v1/keys/{slave_sae}/status")

    def enc_keys(self, slave_sae: str, number: int = 1, size: int = 256) -> list[tuple[str, bytes]]:
        """New keys shared with ``slave_sae``: [(key_ID, key bytes)] (POST form)."""
        answer = self._request("POST", f"/api/v1/keys/{slave_sae}/enc_keys",
                               {"number": number, "size": size})
        return [(k["key_ID"], base64.b64decode(k["key"])) for k in answer["keys"]]

    def dec_keys(self, master_sae: str, key_ids: list[str]) -> dict[str, bytes]:
        """The keys ``key_ids`` that ``master_sae`` took for this SAE (POST form)."""
        answer = self._request("POST", f"/api/v1/keys/{master_sae}/dec_keys",
                               {"key_IDs": [{"key_ID": kid} for kid in key_ids]})
        return {k["key_ID"]: base64.b64decode(k["key"]) for k in answer["keys"]}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
