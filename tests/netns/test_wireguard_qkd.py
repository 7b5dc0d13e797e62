"""End to end: scenarios/ip-wireguard-qkd.toml under ``qnet run --netns``. A WireGuard tunnel
between alice and bob changes its preshared key >= 3 times to ETSI 014 keys of the nodes'
KMEs; both ends used the same 32-byte key each time (by hash in result.json), a handshake
completed under each, and the ICMP stream through the tunnel lost no more than the wire's
configured loss allows (binomial bound on the pings actually sent). The run is captured
(``--capture``): tshark finds TCP handshakes and one WireGuard handshake per key in the wire's
pcapng."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.e2e.qnet_process import ROOT, run_qnet
from tests.netns.handmade import missing

SCENARIO = ROOT / "scenarios" / "ip-wireguard-qkd.toml"
pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(missing("wireguard-go") is not None,
                                 reason=str(missing("wireguard-go")))]


def test_psk_follows_the_kme_and_pings_survive(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_qnet("run", "--netns", "--capture", str(SCENARIO), "--run-dir", str(run_dir),
                    "--no-progress", timeout=150)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    ends = {p["name"]: p["result"] for p in result["programs"]}
    master, slave = ends["alice:wireguard"], ends["bob:wireguard"]
    assert master is not None and slave is not None, result["programs"]

    assert master["key_changes"] >= 3 and slave["key_changes"] == master["key_changes"]
    assert [k["key_ID"] for k in master["keys"]] == [k["key_ID"] for k in slave["keys"]]
    assert [k["sha256"] for k in master["keys"]] == [k["sha256"] for k in slave["keys"]]
    assert len({k["sha256"] for k in master["keys"]}) == len(master["keys"])
    assert all(k["bytes"] == 32 for k in master["keys"] + slave["keys"])
    for key in master["keys"]:  # the handshake mixes the PSK in: it proves both held it
        assert key["handshake_at"] is not None and key["handshake_at"] > key["installed_at"], key
    # every --interval 2 s, or right after the previous key's handshake when that took longer
    # (one lost handshake message costs WireGuard's 5 s REKEY_TIMEOUT; p = 2 % per handshake)
    for a, b in zip(master["keys"][1:], master["keys"][2:]):
        due = max(2.0, a["handshake_at"] - a["installed_at"])
        assert 1.5 < b["installed_at"] - a["installed_at"] < due + 2.0, (a, b)

    link_loss = tomllib.loads(SCENARIO.read_text())["links"][0]["classical"]["loss"]
    p_ping = 1 - (1 - link_loss) ** 2  # request and reply each cross the wire once
    ping = master["ping"]
    n = ping["sent"]
    assert n >= 100, ping
    bound = n * p_ping + 4 * math.sqrt(n * p_ping * (1 - p_ping)) + 1
    assert ping["lost"] <= bound, (ping, bound)

    if shutil.which("tshark") is None:
        return
    capture = run_dir / "capture-alice-bob.pcapng"
    shown = subprocess.run(["tshark", "-r", str(capture), "-T", "fields", "-e", "frame.protocols",
                            "-Y", "(tcp.flags.syn == 1 && tcp.flags.ack == 0) || wg.type == 1"],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    protocols = shown.stdout.split()
    assert any(p.endswith(":tcp") for p in protocols), "no TCP SYN in the capture"
    initiations = sum(p.endswith(":wg") for p in protocols)
    assert initiations >= len(master["keys"]), initiations  # one handshake per key at least
