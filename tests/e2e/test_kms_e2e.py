"""End to end: ``qnet run`` of kms-etsi014 serves QKD keys over ETSI GS QKD 014 with mutual
TLS: curl (GET and POST) and a Python client get the same key bytes at both KMEs, result.json
counts them under ``kms``, and no process outlives the run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from qnet_process import ROOT, descendants, running_qnet, wait_gone

from emulator.fault_cli import send_fault
from nodes.services.kme.client import KmeClient, KmeHttpError, client_context

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("curl") is None,
                                                  reason="curl not installed")]


def curl(kms: Path, sae: str, url: str, *extra: str) -> dict:
    done = subprocess.run(["curl", "-sS", "--fail-with-body", "--cert", str(kms / f"{sae}.pem"),
                           "--key", str(kms / f"{sae}.key"), "--cacert", str(kms / "ca.pem"),
                           *extra, url], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def test_kms_etsi014_with_curl_and_python(tmp_path) -> None:
    run_dir = tmp_path / "run"
    kms = run_dir / "kms"
    with running_qnet("run", str(ROOT / "scenarios/kms-etsi014.toml"), "--duration", "10",
                      "--run-dir", str(run_dir), "--json", str(tmp_path / "r.json")) as qnet:
        deadline = time.monotonic() + 120  # the first key came ~20 s after launch, loaded
        configs = [run_dir / f"{node}.config.json" for node in ("alice", "bob")]
        while not all(path.exists() for path in [kms / "README.txt", *configs]):
            assert qnet.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        readme = (kms / "README.txt").read_text()
        attached = dict(re.findall(r"# (sae-\w+) \(at (\w+)\)", readme))
        ports = {node: json.loads((run_dir / f"{node}.config.json").read_text())["kms"]["port"]
                 for node in ("alice", "bob")}
        assert attached == {"sae-alice": "alice", "sae-bob": "bob"}
        alice, bob = (f"https://127.0.0.1:{ports[n]}" for n in ("alice", "bob"))
        assert f"{alice}/api/v1/keys/sae-bob/enc_keys" in readme
        status = {}
        while not status.get("stored_key_count"):  # the first QKD block
            assert qnet.poll() is None and time.monotonic() < deadline, "no key in time"
            time.sleep(0.2)
            try:
                status = curl(kms, "sae-alice", f"{alice}/api/v1/keys/sae-bob/status")
            except AssertionError:  # the KME is not up yet
                status = {}
        assert status["key_size"] == 256 and status["source_KME_ID"] == "alice-kme"
        children = descendants(qnet.pid)

        got = curl(kms, "sae-alice", f"{alice}/api/v1/keys/sae-bob/enc_keys?number=2&size=256")
        ids = [k["key_ID"] for k in got["keys"]]
        back = curl(kms, "sae-bob", f"{bob}/api/v1/keys/sae-alice/dec_keys?key_ID={ids[0]}")
        assert back["keys"] == got["keys"][:1]
        body = json.dumps({"key_IDs": [{"key_ID": ids[1]}]})
        back = curl(kms, "sae-bob", f"{bob}/api/v1/keys/sae-alice/dec_keys", "-X", "POST", "-H",
                    "Content-Type: application/json", "-d", body)
        assert back["keys"] == got["keys"][1:]
        posted = curl(kms, "sae-alice", f"{alice}/api/v1/keys/sae-bob/enc_keys", "-X", "POST",
                      "-H", "Content-Type: application/json", "-d", '{"number": 3, "size": 128}')
        posted_ids = "&".join(f"key_ID={k['key_ID']}" for k in posted["keys"])
        assert curl(kms, "sae-bob", f"{bob}/api/v1/keys/sae-alice/dec_keys?{posted_ids}") == posted

        def client(sae: str, url: str) -> KmeClient:
            return KmeClient(url, client_context(kms / f"{sae}.pem", kms / f"{sae}.key",
                                                 kms / "ca.pem"))

        b, a = client("sae-bob", bob), client("sae-alice", alice)
        keys = b.enc_keys("sae-alice", number=4, post=True)  # bob's SAE is master this time
        assert a.dec_keys("sae-bob", [k for k, _ in keys]) == keys
        with pytest.raises(KmeHttpError) as refused:
            a.dec_keys("sae-bob", [k for k, _ in keys])  # never twice
        assert refused.value.status == 401
        with pytest.raises(KmeHttpError) as bad:
            a.enc_keys("sae-bob", number=129)
        assert bad.value.status == 400
        a.close(), b.close()
        stdout, stderr = qnet.communicate(timeout=120)
        assert qnet.returncode == 0, stdout[-3000:] + stderr[-3000:]
        assert "curl --cert" in stdout
        assert len(children) >= 4 and not wait_gone(children, 5)
    result = json.loads((tmp_path / "r.json").read_text())
    by_node = {entry["node"]: entry for entry in result["kms"]}
    assert by_node["alice"]["enc_requests"] == 2 and by_node["bob"]["enc_requests"] == 1
    assert by_node["alice"]["delivered"] == 5 + 4  # 5 as master's KME, 4 claimed by sae-alice
    assert by_node["bob"]["delivered"] == 5 + 4
    assert by_node["alice"]["http_400"] == 1 and by_node["alice"]["http_401"] == 1
    assert by_node["alice"]["stored"] > 0 and by_node["alice"]["commits"] > 0
    ups = {e["node"] for e in result["events"] if e["kind"] == "kms_peer_up"}
    assert ups == {"alice", "bob"}  # the KME channel through the relay, as node events


def test_a_cut_link_gives_503_then_keys_again_after_restore(tmp_path) -> None:
    """The cut is applied at run time (as by ``qnet fault``, in-process: that command took 8 s
    to start on a loaded machine) once alice's KME has served a key, for 8 s: longer than the
    KME's peer timeout (5 s), so a request in the cut goes unanswered. (A cut scheduled at 4 s
    came before the first key on a loaded machine: that key came 17.8 emulated s after the
    start.) The run's 20 s leave the keys after the restore room."""
    run_dir = tmp_path / "run"
    kms = run_dir / "kms"
    statuses: list[int] = []
    cut = False
    with running_qnet("run", str(ROOT / "scenarios/kms-etsi014.toml"), "--duration", "20",
                      "--run-dir", str(run_dir), "--json", str(tmp_path / "r.json")) as qnet:
        deadline = time.monotonic() + 150
        config = run_dir / "alice.config.json"
        while not config.exists():
            assert qnet.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        url = f"https://127.0.0.1:{json.loads(config.read_text())['kms']['port']}"
        client = KmeClient(url, client_context(kms / "sae-alice.pem", kms / "sae-alice.key",
                                               kms / "ca.pem"), timeout=15)
        while qnet.poll() is None and time.monotonic() < deadline:
            try:
                client.enc_keys("sae-bob", number=1)
                statuses.append(200)
            except KmeHttpError as exc:
                statuses.append(exc.status)
            except OSError:  # the KME is not up yet
                pass
            if not cut and 200 in statuses:  # in-process: `qnet fault` took 8 s to start, loaded
                send_fault(run_dir, "cut", "alice-bob", plane="both", for_s=8.0)
                cut = True
            text = "".join("x" if s != 200 else "." for s in statuses)
            if re.search(r"\.x+\.", text):  # served, refused during the cut, served again
                break
            time.sleep(0.3)
        client.close()
        stdout, stderr = qnet.communicate(timeout=120)
        assert qnet.returncode == 0, stdout[-3000:] + stderr[-3000:]
    text = "".join("x" if s != 200 else "." for s in statuses)
    assert re.search(r"\.x+\.", text), statuses
    assert set(statuses) <= {200, 503}
    result = json.loads((tmp_path / "r.json").read_text())
    alice = next(e for e in result["kms"] if e["node"] == "alice")
    assert alice["http_503"] == statuses.count(503)
    kinds = [e["kind"] for e in result["events"] if e.get("node") == "alice"]
    assert "kms_peer_unanswered" in kinds and "kms_peer_answering" in kinds
    assert kinds.index("kms_peer_unanswered") < kinds.index("kms_peer_answering")
