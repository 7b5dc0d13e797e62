"""End to end: result.json ``kms`` is the key service's state at the end of the run, not when
the node's apps ended: a ``wait = true`` program that takes keys only after its node
published its apps' result is counted (the node re-publishes on control/stop)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qnet_process import alive, run_qnet

pytestmark = pytest.mark.e2e

SCENARIO = """
[scenario]
name = "kms-final"
duration_s = 3
seed = 4

[[nodes]]
name = "alice"
[[nodes.sae]]
id = "sae-alice"
[[nodes.run]]
name = "late"
command = ["python", "{late}", "{log}"]
wait = true
[[nodes]]
name = "bob"
[[nodes.sae]]
id = "sae-bob"

[[links]]
a = "alice"
b = "bob"
length_km = 5
[links.quantum.source]
rate_hz = 2e7

[[apps]]
kind = "qkd.bb84"
a = "alice"
b = "bob"
psk = "kms final report test secret"
"""

LATE = """
import json, sys, time
from pathlib import Path
from nodes.apps.secure_echo.etsi014 import Etsi014Client
log = Path(sys.argv[1])
deadline = time.time() + 60
while "result published" not in log.read_text() and time.time() < deadline:
    time.sleep(0.1)  # the node's log line after it published its apps' result
if "result published" not in log.read_text():
    sys.exit("alice never published its apps' result")
kme = Etsi014Client.from_environment()
ids = [kid for _ in range(3) for kid, _ in kme.enc_keys("sae-bob", number=1, size=256)]
print(json.dumps({"ids": ids, "stored": kme.status("sae-bob")["stored_key_count"]}), flush=True)
"""


def test_kms_report_counts_keys_taken_after_the_apps_ended(tmp_path: Path) -> None:
    (tmp_path / "late.py").write_text(LATE)
    run_dir = tmp_path / "run"
    scenario = tmp_path / "kms-final.toml"
    scenario.write_text(SCENARIO.format(late=tmp_path / "late.py", log=run_dir / "alice.log"))
    done = run_qnet("run", str(scenario), "--run-dir", str(run_dir), "--no-progress",
                    timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert {p["name"]: p["exit_code"] for p in result["programs"]} == {"alice:late": 0}
    late = json.loads((run_dir / "alice.late.log").read_text().strip().splitlines()[-1])
    assert len(set(late["ids"])) == 3
    kms = {k["node"]: k for k in result["kms"]}
    alice = kms["alice"]
    assert alice["enc_requests"] == 3 and alice["keys_served"] == 3, alice
    assert alice["delivered"] == 3 and alice["peers"]["bob"]["delivered"] == 3
    assert alice["peers"]["bob"]["available"] == alice["stored"] == late["stored"], alice
    assert kms["bob"]["reserved"] == 3  # taken for sae-bob, never fetched by it
    assert not [p["pid"] for p in result["processes"] if p["pid"] and alive(p["pid"])]
