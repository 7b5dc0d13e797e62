"""End to end: bob, the KME's node, SIGKILLed mid-run (``action = "crash"``) and restarted by
the supervisor inside ``qnet run``: on its old ports, its key database reopened, the KME peer
link back; no stored key lost, none served twice; the run exits 0 and leaves nothing behind."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from qnet_process import ROOT, descendants, running_qnet, wait_gone

from nodes.services.kme.client import KmeClient, KmeHttpError, client_context

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
CRASH_AT_S, RESTART_AFTER_S, DURATION_S = 20, 2, 30  # keys before the crash, under load


def rows(database: Path) -> dict[str, tuple[str, bytes | None]]:
    """key_id -> (state, material) of a node's key store, read-only."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return {kid: (state, material) for kid, state, material
                in db.execute("SELECT key_id, state, material FROM keys")}


def ready_pid(run_dir: Path, node: str) -> int | None:
    try:
        return json.loads((run_dir / f"{node}.ready.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_crashed_and_restarted_kme_node_keeps_every_key(tmp_path) -> None:
    scenario = tmp_path / "crash.toml"
    base = (ROOT / "scenarios/kms-etsi014.toml").read_text()
    both_ends = '[[expect]]\nmetric = "qkd.alice-bob.secret_bits"\n'
    assert both_ends in base  # bob's app entries die with bob: expect alice's half only
    scenario.write_text(base.replace(both_ends, both_ends.replace("secret_bits", "secret_bits_a"))
                        + f"""
[[faults]]
at_s = {CRASH_AT_S}
action = "crash"
node = "bob"
restart_after_s = {RESTART_AFTER_S}
""")
    run_dir, kms = tmp_path / "run", tmp_path / "run" / "kms"
    with running_qnet("run", str(scenario), "--duration", str(DURATION_S), "--run-dir",
                      str(run_dir), "--json", str(tmp_path / "r.json")) as qnet:
        deadline = time.monotonic() + 120

        def until(what: str, check) -> object:
            while not (got := check()):
                assert qnet.poll() is None, f"qnet ended before {what}"
                assert time.monotonic() < deadline, f"no {what} in time"
                time.sleep(0.2)
            return got

        configs = {n: run_dir / f"{n}.config.json" for n in ("alice", "bob")}
        until("configs", lambda: all(p.exists() for p in configs.values()))
        config = {n: json.loads(p.read_text())["kms"] for n, p in configs.items()}

        def client(sae: str, node: str) -> KmeClient:
            return KmeClient(f"https://127.0.0.1:{config[node]['port']}", client_context(
                kms / f"{sae}.pem", kms / f"{sae}.key", kms / "ca.pem"), timeout=15)

        a, b = client("sae-alice", "alice"), client("sae-bob", "bob")

        def stored() -> int:
            try:
                return a.status("sae-bob")["stored_key_count"] >= 40
            except (OSError, KmeHttpError):
                return False

        until("40 stored keys", stored)
        first_pid = ready_pid(run_dir, "bob")
        children = descendants(qnet.pid)
        sent = a.enc_keys("sae-bob", number=12)  # alice's SAE is master: bob reserves them
        delivered, reserved = sent[:6], sent[6:]
        assert b.dec_keys("sae-alice", [k for k, _ in delivered]) == delivered
        mine = b.enc_keys("sae-alice", number=4)  # bob's SAE is master: alice reserves them
        before = rows(Path(config["bob"]["database"]))  # bob's store, some time before the crash
        assert all(before[k][0] == "reserved" for k, _ in reserved)
        b.close()

        until("bob's restart", lambda: ready_pid(run_dir, "bob") not in (None, first_pid))
        b = client("sae-bob", "bob")
        with pytest.raises(KmeHttpError) as again:  # delivered before the crash: never again
            b.dec_keys("sae-alice", [k for k, _ in delivered])
        assert again.value.status == 401
        assert b.dec_keys("sae-alice", [k for k, _ in reserved]) == reserved  # exactly once
        with pytest.raises(KmeHttpError):
            b.dec_keys("sae-alice", [k for k, _ in reserved])
        assert a.dec_keys("sae-bob", [k for k, _ in mine]) == mine  # alice's side kept them

        def after_restart() -> list[tuple[str, bytes]] | None:  # over the reconnected peer link
            try:
                return a.enc_keys("sae-bob", number=2)
            except KmeHttpError as exc:
                assert exc.status == 503, exc
                return None

        fresh = until("keys over the reconnected KME link", after_restart)
        got = until("bob's release of the fresh keys", lambda: _try_dec(b, fresh))
        assert got == fresh
        a.close(), b.close()
        stdout, stderr = qnet.communicate(timeout=120)
        assert qnet.returncode == 0, stdout[-3000:] + stderr[-3000:]
        assert len(children) >= 4 and not wait_gone(children, 5)

    alice, bob = (rows(Path(config[n]["database"])) for n in ("alice", "bob"))
    taken = [*delivered, *reserved, *mine, *fresh]
    for kid, material in taken:  # every key clients got: delivered at both ends, same bytes
        assert alice[kid] == ("delivered", material) and bob[kid] == ("delivered", material)
    for kid, (state, material) in before.items():  # nothing bob had stored is missing
        assert kid in bob and (material is None or bob[kid][1] in (material, None)), kid
        if state == "delivered":
            assert bob[kid][0] == "delivered"
    result = json.loads((tmp_path / "r.json").read_text())
    events = [e for e in result["events"] if e.get("node") == "bob"]
    kinds = [e["kind"] for e in events]
    assert kinds.index("fault") < kinds.index("node_down") < kinds.index("node_restarted")
    down = next(e for e in events if e["kind"] == "node_down")
    assert down["exit_code"] == -9
    assert result["ok"] is True


def _try_dec(client: KmeClient, keys: list[tuple[str, bytes]]) -> list | None:
    """bob's SAE fetches ``keys`` (None while alice's release has not arrived yet)."""
    try:
        return client.dec_keys("sae-alice", [k for k, _ in keys])
    except KmeHttpError as exc:
        assert exc.status == 401, exc
        return None
