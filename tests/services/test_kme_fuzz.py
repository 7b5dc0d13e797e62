"""Random bodies and queries against the KME's ASGI app: always a 400/401/503 answer with
{message, details} (or a status, or 405 for a wrong method), never an exception, and the key
store untouched."""

from __future__ import annotations

import json

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes.services.keys import KeyManager
from nodes.services.kme import Kme, KmeOptions, PeerLink, create_app

SAES = {"sae-a": "alice", "sae-b": "bob"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                               max_size=4),
    max_leaves=12)
fields = st.sampled_from(["number", "size", "additional_slave_SAE_IDs", "extension_mandatory",
                          "extension_optional", "key_IDs", "key_ID", "colour"])
bodies = (st.binary(max_size=200)
          | st.dictionaries(fields, json_values, max_size=4).map(lambda d: json.dumps(d).encode())
          | json_values.map(lambda v: json.dumps(v).encode()))
paths = st.sampled_from(["/api/v1/keys/sae-b/enc_keys", "/api/v1/keys/sae-a/dec_keys",
                         "/api/v1/keys/sae-b/status", "/api/v1/keys/%00/enc_keys"])
queries = st.text(alphabet="abcdeknmuzI_D=&%0123456789-", max_size=40)


async def request(app, method: str, path: str, query: str, body: bytes) -> tuple[int, dict]:
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "headers": [(b"content-type", b"application/json")],
             "extensions": {"tls": {"sae_id": "sae-a"}}, "http_version": "1.1",
             "scheme": "https", "server": ("127.0.0.1", 1), "client": ("127.0.0.1", 2),
             "root_path": ""}
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            await trio.sleep_forever()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    out = []

    async def send(message):
        out.append(message)

    await app(scope, receive, send)
    status = out[0]["status"]
    payload = b"".join(m.get("body", b"") for m in out[1:])
    return status, json.loads(payload) if status != 405 else {}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(["GET", "POST"]), path=paths, query=queries, body=bodies)
def test_random_requests_get_a_clean_error_and_touch_nothing(tmp_path, method, path, query,
                                                             body) -> None:
    async def main() -> None:
        keys = KeyManager(tmp_path / "alice.sqlite", 256, 1000)
        kme = Kme("alice", keys, SAES, KmeOptions(peer_timeout_s=0.01, pending_wait_s=0.01))

        async def never():
            await trio.sleep_forever()

        kme.add_peer("bob", PeerLink("alice", "bob", b"k" * 32, never, kme.on_peer, 0.01))
        app = create_app(kme)
        status, answer = await request(app, method, path, query, body)
        if status == 200:  # a well-formed status request; the pool is empty, nothing else can be
            assert path.endswith("/status") and answer["stored_key_count"] == 0
        elif status != 405:
            assert status in (400, 401, 503), (status, answer)
            assert isinstance(answer["message"], str) and isinstance(answer["details"], list)
        assert keys.db.counts() == {}
        keys.close()

    trio.run(main)
