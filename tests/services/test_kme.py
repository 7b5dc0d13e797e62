"""ETSI GS QKD 014 KMEs over mutual TLS: both directions, GET and POST, curl, errors, load."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
from collections import Counter

import pytest
import trio

from emulator.pki import Authority
from nodes.services.keys import DELIVERED, RESERVED
from nodes.services.kme import KmeOptions
from nodes.services.kme.client import KmeHttpError, client_context
from tests.services.kms_pair import kms_pair

pytestmark = pytest.mark.timeout(120)
OPTIONS = KmeOptions(key_size=256, max_key_count=1000, max_key_per_request=16, min_key_size=64,
                     peer_timeout_s=2.0, pending_wait_s=0.5)
LIMIT = trio.CapacityLimiter(64)


async def call(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=LIMIT)


async def test_enc_keys_at_alice_dec_keys_at_bob_get_and_post(tmp_path) -> None:
    async with kms_pair(tmp_path, OPTIONS) as pair:
        await pair.deposit(256 * 20)
        a, b = pair.client("sae-a"), pair.client("sae-b")
        status = await call(a.status, "sae-b")
        assert status["stored_key_count"] == 20 and status["source_KME_ID"] == "alice-kme"
        assert status["target_KME_ID"] == "bob-kme" and status["max_SAE_ID_count"] == 8
        for post in (False, True):
            keys = await call(a.enc_keys, "sae-b", number=3, size=128, post=post)
            assert len(keys) == 3 and all(len(k) == 16 for _, k in keys)
            got = await call(b.dec_keys, "sae-a", [k for k, _ in keys], post=post)
            assert got == keys
        assert (await call(a.status, "sae-b"))["stored_key_count"] == 14
        # bob's SAE as master: bob asks alice (the allocator), alice reserves for sae-a
        keys = await call(b.enc_keys, "sae-a", number=2, post=True)
        assert all(len(k) == 32 for _, k in keys)
        assert await call(a.dec_keys, "sae-b", [k for k, _ in keys], post=False) == keys
        a.close(), b.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_gets_the_same_key_bytes_at_both_kmes(tmp_path) -> None:
    async with kms_pair(tmp_path, OPTIONS) as pair:
        await pair.deposit(256 * 8)

        async def curl(sae: str, node: str, path: str, *extra: str) -> dict:
            issued = pair.pki.saes[sae]
            done = await trio.run_process(
                ["curl", "-sS", "--fail-with-body", "--cert", str(issued.cert), "--key",
                 str(issued.key), "--cacert", str(pair.pki.ca), *extra,
                 pair.urls[node] + path], capture_stdout=True, capture_stderr=True)
            return json.loads(done.stdout)

        got = await curl("sae-a", "alice", "/api/v1/keys/sae-b/enc_keys?number=2")
        ids = [k["key_ID"] for k in got["keys"]]
        back = await curl("sae-b", "bob", f"/api/v1/keys/sae-a/dec_keys?key_ID={ids[0]}")
        assert back["keys"] == got["keys"][:1]
        body = json.dumps({"key_IDs": [{"key_ID": ids[1]}]})
        back = await curl("sae-b", "bob", "/api/v1/keys/sae-a/dec_keys", "-X", "POST",
                          "-H", "Content-Type: application/json", "-d", body)
        assert back["keys"] == got["keys"][1:]
        posted = await curl("sae-a", "alice", "/api/v1/keys/sae-b/enc_keys", "-X", "POST",
                            "-H", "Content-Type: application/json", "-d", '{"number": 1}')
        again = await curl("sae-b", "bob", "/api/v1/keys/sae-a/dec_keys?key_ID="
                           + posted["keys"][0]["key_ID"])
        assert again == posted


def _handshake(url: str, context: ssl.SSLContext) -> None:
    """Connect and make one request (TLS 1.3 reports a refused client cert on first read)."""
    host, port = url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"GET /api/v1/keys/sae-b/status HTTP/1.1\r\nHost: x\r\n\r\n")
            if not tls.recv(1024):
                raise ConnectionResetError("closed")


async def test_no_client_certificate_or_another_ca_fails_the_handshake(tmp_path) -> None:
    async with kms_pair(tmp_path, OPTIONS) as pair:
        bare = ssl.create_default_context(cafile=str(pair.pki.ca))
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            await call(_handshake, pair.urls["alice"], bare)
        stranger = Authority("someone else")
        (tmp_path / "x").mkdir()
        issued = stranger.write(tmp_path / "x", "sae-a", "sae-a", server=False)
        foreign = client_context(issued.cert, issued.key, pair.pki.ca)
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            await call(_handshake, pair.urls["alice"], foreign)
        good = pair.client("sae-a")  # the server still serves the others
        assert (await call(good.status, "sae-b"))["slave_SAE_ID"] == "sae-b"


async def test_unauthorised_callers_get_401(tmp_path) -> None:
    async with kms_pair(tmp_path, OPTIONS) as pair:
        await pair.deposit(256 * 8)
        a, b, c = pair.client("sae-a"), pair.client("sae-b"), pair.client("sae-c")
        keys = await call(a.enc_keys, "sae-b", number=2)
        ids = [k for k, _ in keys]
        for attempt in (lambda: c.dec_keys("sae-a", ids),  # addressed to sae-b, not sae-c
                        lambda: b.dec_keys("sae-a", ["5b0f6a43-0000-5000-8000-000000000000"]),
                        lambda: b.dec_keys("sae-c", ids),  # wrong master
                        lambda: pair.client("sae-b", "alice").status("sae-a")):  # not its KME
            with pytest.raises(KmeHttpError) as refused:
                await call(attempt)
            assert refused.value.status == 401 and refused.value.body["message"]
        assert await call(b.dec_keys, "sae-a", ids) == keys  # nothing was spent by the 401s


async def test_bad_requests_get_400_and_too_many_keys_503(tmp_path) -> None:
    async with kms_pair(tmp_path, OPTIONS) as pair:
        await pair.deposit(256 * 4)
        a = pair.client("sae-a")
        enc = "/api/v1/keys/sae-b/enc_keys"
        for method, path, body in [
            ("GET", enc + "?size=100", None), ("GET", enc + "?size=512", None),
            ("GET", enc + "?size=32", None), ("GET", enc + "?number=17", None),
            ("GET", enc + "?number=0", None), ("GET", enc + "?number=two", None),
            ("GET", enc + "?count=1", None), ("POST", enc, b"{not json"),
            ("POST", enc, b'{"number": 1, "colour": "red"}'),
            ("POST", enc, b'{"number": 1, "additional_slave_SAE_IDs": ["sae-e"]}'),
            ("POST", enc, b'{"number": 1, "extension_mandatory": [{"x": 1}]}'),
            ("POST", enc, b'[1, 2]'), ("GET", "/api/v1/keys/nobody/status", None),
            ("POST", "/api/v1/keys/sae-a/dec_keys", b'{"key_IDs": []}'),
            ("GET", "/api/v1/keys/sae-a/dec_keys?key_ID=not-a-uuid", None),
        ]:
            status, answer = await call(a.request, method, path, body)
            assert status == 400, (path, body, answer)
            assert isinstance(answer["message"], str) and isinstance(answer["details"], list)
        status, answer = await call(a.request, "POST", enc, b'{"number": 5}')
        assert status == 503 and answer["details"][0]["stored_key_count"] == 4
        assert await call(a.enc_keys, "sae-b", number=4)  # the 400s and the 503 took nothing


async def test_garbage_on_one_connection_does_not_hurt_others(tmp_path) -> None:
    async with kms_pair(tmp_path, OPTIONS) as pair:
        await pair.deposit(256 * 4)
        host, port = pair.urls["alice"].removeprefix("https://").split(":")
        issued = pair.pki.saes["sae-a"]
        context = client_context(issued.cert, issued.key, pair.pki.ca)

        def garbage() -> None:
            with socket.create_connection((host, int(port)), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname=host) as tls:
                    tls.sendall(b"\x00\xff GARBAGE \r\n\r\n" * 100)
                    tls.recv(1024)

        await call(garbage)
        assert len(await call(pair.client("sae-a").enc_keys, "sae-b", number=2)) == 2


async def test_50_concurrent_requests_from_two_saes_never_share_a_key(tmp_path) -> None:
    async with kms_pair(tmp_path, OPTIONS) as pair:
        await pair.deposit(256 * 120)
        delivered: list[tuple[str, str, str, bytes]] = []  # (master, slave, id, key)
        refused = Counter()

        def one(master: str, slave: str) -> None:
            client = pair.client(master)
            try:
                for kid, key in client.enc_keys(slave, number=3, post=True):
                    delivered.append((master, slave, kid, key))
            except KmeHttpError as exc:
                refused[exc.status] += 1
            client.close()

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(call, one, *(("sae-a", "sae-b") if i % 2 else
                                                ("sae-b", "sae-a")))
        ids = [kid for _, _, kid, _ in delivered]
        assert len(ids) == len(set(ids))  # every key id at most once
        assert set(refused) <= {503} and len(ids) + 3 * sum(refused.values()) == 150
        left = set()
        for node, manager in pair.managers.items():
            counts = manager.db.counts()
            rows = manager.db.db.execute("SELECT key_id FROM keys WHERE state = ?",
                                         (DELIVERED,)).fetchall()
            left |= {r[0] for r in rows}
            assert sum(counts[p][RESERVED] for p in counts) == len(ids) - len(rows)
        assert left == set(ids)  # the union delivered equals what left the stores
        for master, slave, kid, key in delivered[:20]:
            other = pair.client(slave)
            assert await call(other.dec_keys, master, [kid]) == [(kid, key)]
            other.close()


async def test_peer_kme_unreachable_gives_503_and_burns_nothing_twice(tmp_path) -> None:
    options = KmeOptions(key_size=256, peer_timeout_s=0.3, max_key_per_request=16)
    async with kms_pair(tmp_path, options, connect=False) as pair:
        await pair.deposit(256 * 4)
        a = pair.client("sae-a")
        with pytest.raises(KmeHttpError) as down:
            await call(a.enc_keys, "sae-b", number=2)
        assert down.value.status == 503
        assert pair.managers["alice"].db.stored_count("bob") == 2  # the two are discarded
        with pytest.raises(KmeHttpError):
            await call(pair.client("sae-b").enc_keys, "sae-a", number=1)


async def test_pool_limit_discards_reach_the_peer(tmp_path) -> None:
    options = KmeOptions(key_size=256, max_key_count=5, max_key_per_request=16)
    async with kms_pair(tmp_path, options) as pair:
        await pair.deposit(256 * 8)
        with trio.fail_after(5):
            while pair.managers["bob"].db.stored_count("alice") != 5:
                await trio.sleep(0.01)
        assert pair.managers["alice"].db.stored_count("bob") == 5
        status = await call(pair.client("sae-a").status, "sae-b")
        assert status["stored_key_count"] == 5 and status["max_key_count"] == 5


async def test_served_openapi_document_equals_the_file_in_the_repo(tmp_path) -> None:
    from pathlib import Path

    kept = json.loads((Path(__file__).parents[2] / "docs" / "etsi014-openapi.json").read_text())
    async with kms_pair(tmp_path, OPTIONS) as pair:
        status, served = await call(pair.client("sae-a").request, "GET", "/api/v1/openapi.json")
    assert status == 200 and served == kept
    assert set(kept["paths"]) == {"/api/v1/keys/{slave_SAE_ID}/status",
                                  "/api/v1/keys/{slave_SAE_ID}/enc_keys",
                                  "/api/v1/keys/{master_SAE_ID}/dec_keys"}
    status_fields = set(kept["components"]["schemas"]["Status"]["properties"])
    assert {"source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID", "key_size",
            "stored_key_count", "max_key_count", "max_key_per_request", "max_key_size",
            "min_key_size", "max_SAE_ID_count"} <= status_fields


async def test_pool_events_are_edge_triggered(tmp_path) -> None:
    async with kms_pair(tmp_path, OPTIONS) as pair:
        kme = pair.kmes["alice"]
        kind, fields = await kme.events.receive()
        assert kind == "kms_peer_up" and fields == {"peer": "bob"}
        await pair.deposit(256 * 2)
        a = pair.client("sae-a")
        await call(a.enc_keys, "sae-b", number=2)
        for _ in range(2):
            with pytest.raises(KmeHttpError):
                await call(a.enc_keys, "sae-b", number=1)
        await pair.deposit(256 * 2)
        await call(a.enc_keys, "sae-b", number=1)
        got = [kme.events.receive_nowait() for _ in range(2)]
        assert [k for k, _ in got] == ["kms_exhausted", "kms_resumed"]  # one each, not two
        assert got[0][1] == {"master_sae": "sae-a", "slave_sae": "sae-b", "stored_key_count": 0}
        with pytest.raises(trio.WouldBlock):
            kme.events.receive_nowait()
        a.close()


async def test_peer_instructions_that_do_not_fit_the_pair_are_refused(tmp_path) -> None:
    from nodes.services.kme.peering import Ack, Allocate, Refused, Release

    async with kms_pair(tmp_path, OPTIONS) as pair:
        await pair.deposit(256 * 4)
        alice, bob = pair.kmes["alice"], pair.kmes["bob"]
        ids = [k for k, _ in pair.managers["bob"].db.db.execute("SELECT key_id, 1 FROM keys")]
        # bob is not the allocator: a Release from bob to alice reserves nothing
        assert await alice.on_peer("bob", Release(1, ids[:1], "sae-b", "sae-a", 256)) == \
            Ack(1, ids[:1])
        # a Release naming a slave that is not at bob, or a master not at alice
        assert (await bob.on_peer("alice", Release(2, ids[:1], "sae-a", "sae-a", 256))).conflicts
        assert (await bob.on_peer("alice", Release(3, ids[:1], "sae-c", "sae-b", 256))).conflicts
        # Allocate asking alice to reserve for an SAE that is not hers
        assert isinstance(await alice.on_peer("bob", Allocate(4, 1, 256, "sae-b", "sae-c")),
                          Refused)
        assert pair.managers["alice"].db.stored_count("bob") == 4
        assert pair.managers["bob"].db.stored_count("alice") == 4


async def test_an_unanswering_peer_costs_one_request_of_keys_not_the_pool(tmp_path) -> None:
    options = KmeOptions(key_size=256, peer_timeout_s=0.3, max_key_per_request=16)
    async with kms_pair(tmp_path, options) as pair:
        await pair.deposit(256 * 10)
        a, link = pair.client("sae-a"), pair.links["bob"]
        answer = link._handle

        async def silent(message):  # as over a cut link: nothing comes back
            await trio.sleep_forever()

        link._handle = silent
        for _ in range(4):
            with pytest.raises(KmeHttpError) as down:
                await call(a.enc_keys, "sae-b", number=2)
            assert down.value.status == 503
        assert pair.managers["alice"].db.stored_count("bob") == 8  # only the first 2 spent
        assert pair.links["alice"].stalled
        link._handle = answer  # restored: a Pong, then keys again
        keys = await call(a.enc_keys, "sae-b", number=2)
        assert not pair.links["alice"].stalled
        kinds = []
        while True:
            try:
                kinds.append(pair.kmes["alice"].events.receive_nowait()[0])
            except trio.WouldBlock:
                break
        assert kinds == ["kms_peer_up", "kms_peer_unanswered", "kms_peer_answering"]
        assert await call(pair.client("sae-b").dec_keys, "sae-a", [k for k, _ in keys]) == keys


def _state(pair, node: str, kid: str) -> str:
    return pair.managers[node].db.get([kid])[kid].state


async def test_additional_slaves_each_get_the_same_keys_once(tmp_path) -> None:
    async with kms_pair(tmp_path, OPTIONS) as pair:
        await pair.deposit(256 * 12)
        a, b, c, d = (pair.client(s) for s in ("sae-a", "sae-b", "sae-c", "sae-d"))
        # master at the allocator (Release) and at the other end (Allocate)
        for master, name, slaves, at in ((a, "sae-a", ("sae-b", "sae-c"), "bob"),
                                         (b, "sae-b", ("sae-a", "sae-e"), "alice")):
            first, second = (pair.client(s) for s in slaves)
            keys = await call(master.enc_keys, slaves[0], number=3, size=128, also=slaves[1:])
            ids = [k for k, _ in keys]
            assert len(keys) == 3 and all(len(k) == 16 for _, k in keys)
            assert await call(first.dec_keys, name, ids[:2], post=False) == keys[:2]
            assert _state(pair, at, ids[0]) == RESERVED  # one of its two slaves has it
            for again in (lambda: first.dec_keys(name, ids[:1]),  # not twice
                          lambda: first.dec_keys(name, ids)):  # all or nothing
                with pytest.raises(KmeHttpError) as refused:
                    await call(again)
                assert refused.value.status == 401
            assert await call(second.dec_keys, name, ids) == keys
            assert await call(first.dec_keys, name, ids[2:]) == keys[2:]
            assert {_state(pair, at, k) for k in ids} == {DELIVERED}
            with pytest.raises(KmeHttpError) as refused:
                await call(second.dec_keys, name, ids[:1])
            assert refused.value.status == 401
            first.close(), second.close()
        # a third SAE at bob that was not named gets 401, and spends nothing
        keys = await call(a.enc_keys, "sae-b", number=1, also=["sae-c"])
        with pytest.raises(KmeHttpError) as refused:
            await call(d.dec_keys, "sae-a", [keys[0][0]])
        assert refused.value.status == 401
        assert await call(b.dec_keys, "sae-a", [keys[0][0]]) == keys
        assert await call(c.dec_keys, "sae-a", [keys[0][0]]) == keys
        for client in (a, b, c, d):
            client.close()


async def test_additional_slaves_that_do_not_fit_get_400_and_cost_nothing(tmp_path) -> None:
    options = KmeOptions(key_size=256, max_key_per_request=16, max_sae_id_count=2)
    async with kms_pair(tmp_path, options) as pair:
        await pair.deposit(256 * 4)
        a = pair.client("sae-a")
        assert (await call(a.status, "sae-b"))["max_SAE_ID_count"] == 2
        enc = "/api/v1/keys/sae-b/enc_keys"
        for also, words in [(["sae-e"], "not to the slave's KME bob-kme"),  # at alice
                            (["sae-a"], "attached to alice-kme"),  # the master itself
                            (["nobody"], "unknown"), (["sae-c", "sae-c"], "twice"),
                            (["sae-b"], "twice"), (["sae-c", "sae-d", "x"], "max_SAE_ID_count")]:
            body = json.dumps({"number": 1, "additional_slave_SAE_IDs": also}).encode()
            status, answer = await call(a.request, "POST", enc, body)
            assert status == 400 and words in answer["message"], (also, answer)
        assert pair.managers["alice"].db.stored_count("bob") == 4
        assert pair.managers["bob"].db.stored_count("alice") == 4
        assert len(await call(a.enc_keys, "sae-b", number=1, also=["sae-c", "sae-d"])) == 1


async def test_peer_release_to_a_slave_not_here_is_refused(tmp_path) -> None:
    from nodes.services.kme.peering import Allocate, Refused, Release

    async with kms_pair(tmp_path, OPTIONS) as pair:
        await pair.deposit(256 * 2)
        ids = [k for k, in pair.managers["bob"].db.db.execute("SELECT key_id FROM keys")]
        bob, alice = pair.kmes["bob"], pair.kmes["alice"]
        for also in (["sae-e"], ["sae-c", "sae-c"], ["sae-b"]):  # at alice, twice, twice
            assert (await bob.on_peer("alice", Release(1, ids[:1], "sae-a", "sae-b", 256,
                                                       also))).conflicts == ids[:1]
        for also in (["sae-c"], ["sae-e", "sae-e"], ["sae-a"]):  # at bob, twice, twice
            assert isinstance(await alice.on_peer("bob", Allocate(2, 1, 256, "sae-b", "sae-a",
                                                                  also)), Refused)
        assert pair.managers["bob"].db.stored_count("alice") == 2
        assert pair.managers["alice"].db.stored_count("bob") == 2


async def test_50_concurrent_dec_keys_by_two_slaves_give_each_id_once_per_sae(tmp_path) -> None:
    async with kms_pair(tmp_path, OPTIONS) as pair:
        await pair.deposit(256 * 20)
        keys: dict[str, bytes] = {}

        async def take() -> None:  # a client (connection) each: KmeClient is not thread-safe
            master = pair.client("sae-a")
            keys.update(await call(master.enc_keys, "sae-b", number=2, also=["sae-c"]))
            master.close()

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(take)
        ids = sorted(keys)
        assert len(ids) == 20
        got: dict[str, list[tuple[str, bytes]]] = {"sae-b": [], "sae-c": []}
        refused = Counter()

        def one(sae: str, wanted: list[str]) -> None:
            client = pair.client(sae)
            try:
                got[sae].extend(client.dec_keys("sae-a", wanted))
            except KmeHttpError as exc:
                refused[sae, exc.status] += 1
            client.close()

        async with trio.open_nursery() as nursery:
            for i in range(50):  # each SAE asks for every id, five of them twice
                nursery.start_soon(call, one, "sae-b" if i % 2 else "sae-c", [ids[i // 2 % 20]])
        for sae in ("sae-b", "sae-c"):
            assert sorted(k for k, _ in got[sae]) == ids  # every id once to each slave
            assert all(keys[k] == key for k, key in got[sae])  # the master's bytes
            assert refused == {("sae-b", 401): 5, ("sae-c", 401): 5}
        assert {_state(pair, "bob", k) for k in ids} == {DELIVERED}


_HALF_CLAIM = """
import sys, time
import numpy as np
from nodes.services.keys import RESERVED, KeyDB, cut_block
db = KeyDB(sys.argv[1])
bits = np.random.default_rng(7).integers(0, 2, 256 * 3, dtype=np.uint8)
keys = cut_block("alice-bob", 0, bits, 256).keys
db.deposit("alice", "alice-bob", 0, keys)
ids = [k for k, _, _ in keys]
assert db.apply("alice", ids, RESERVED, "sae-a", "sae-b", 256, ["sae-c"]) == []
db.claim(ids[:2], "sae-b", "sae-a")
print(" ".join(ids), flush=True)
time.sleep(60)
"""


def test_a_half_claimed_multicast_key_survives_sigkill(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from nodes.services.keys import KeyDB, NotReleased

    path = tmp_path / "bob.sqlite"
    child = subprocess.Popen([sys.executable, "-c", _HALF_CLAIM, str(path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        ids = child.stdout.readline().split()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
    assert len(ids) == 3 and child.returncode == -signal.SIGKILL
    db = KeyDB(path)
    assert {db.get([k])[k].state for k in ids} == {RESERVED}
    with pytest.raises(NotReleased):
        db.claim(ids[:1], "sae-b", "sae-a")  # sae-b had it before the kill
    assert [k for k, _ in db.claim(ids, "sae-c", "sae-a")] == ids
    assert [db.get([k])[k].state for k in ids] == [DELIVERED, DELIVERED, RESERVED]
    assert [k for k, _ in db.claim(ids[2:], "sae-b", "sae-a")] == ids[2:]
    assert db.get(ids[2:])[ids[2]].state == DELIVERED
    db.close()
