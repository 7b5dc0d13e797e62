"""The WireGuard + QKD example between two hand-made namespaces, keys from two real KMEs.

Checks what examples/wireguard-qkd promises without ``qnet run``: every key change, the same
32-byte key at both ends (by hash), a completed handshake under each key, and an ICMP stream
through the tunnel that loses nothing on a lossless veth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trio

from tests.netns.handmade import forward_into, missing, pids_in, veth_pair
from tests.services.kms_pair import kms_pair

ROTATE = Path(__file__).resolve().parents[2] / "examples" / "wireguard-qkd" / "rotate.py"
pytestmark = pytest.mark.skipif(missing("wireguard-go") is not None,
                                reason=str(missing("wireguard-go")))
ROTATIONS = 3


async def run_ends(tmp_path: Path, pair) -> dict[str, dict]:
    results = {}
    async with kms_pair(tmp_path) as kms:
        await kms.deposit(256 * (ROTATIONS + 2) * 2)
        async with trio.open_nursery() as nursery:
            ports = {"sae-a": await nursery.start(forward_into, pair.names[0],
                                                  int(kms.urls["alice"].rsplit(":", 1)[1])),
                     "sae-b": await nursery.start(forward_into, pair.names[1],
                                                  int(kms.urls["bob"].rsplit(":", 1)[1]))}

            async def end(namespace: str, sae: str, peer_sae: str, role: str, me: int) -> None:
                issued = kms.pki.saes[sae]
                env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "QNET_SAE_ID": sae,
                       "QNET_KME_URL": f"https://127.0.0.1:{ports[sae]}",
                       "QNET_SAE_CERT": str(issued.cert), "QNET_SAE_KEY": str(issued.key),
                       "QNET_CA": str(kms.pki.ca), "PYTHONPATH": str(ROTATE.parents[2])}
                done = await trio.run_process(
                    ["ip", "netns", "exec", namespace, sys.executable, str(ROTATE),
                     "--role", role, "--peer-addr", pair.addresses[1 - me],
                     "--tunnel-addr", f"10.77.0.{me + 1}/24",
                     "--peer-tunnel-addr", f"10.77.0.{2 - me}", "--peer-sae", peer_sae,
                     "--interval", "1.0", "--rotations", str(ROTATIONS),
                     "--ping-interval", "0.02"],
                    env=env, capture_stdout=True, stderr=(tmp_path / f"{role}.log").open("wb"),
                    check=False)
                assert done.returncode == 0, (tmp_path / f"{role}.log").read_text()[-3000:]
                results[role] = json.loads(done.stdout.decode().strip().splitlines()[-1])

            with trio.fail_after(45):
                async with trio.open_nursery() as ends:
                    ends.start_soon(end, pair.names[0], "sae-a", "sae-b", "master", 0)
                    ends.start_soon(end, pair.names[1], "sae-b", "sae-a", "slave", 1)
            nursery.cancel_scope.cancel()
    return results


def test_keys_rotate_and_traffic_flows(tmp_path: Path) -> None:
    with veth_pair() as pair:
        results = trio.run(run_ends, tmp_path, pair)
        left = {name: pids_in(name) for name in pair.names}
    assert left == {name: [] for name in pair.names}, "a process outlived the run"
    master, slave = results["master"], results["slave"]
    assert master["key_changes"] == slave["key_changes"] == ROTATIONS
    assert [k["sha256"] for k in master["keys"]] == [k["sha256"] for k in slave["keys"]]
    assert len({k["sha256"] for k in master["keys"]}) == ROTATIONS + 1, "a key was reused"
    assert all(k["bytes"] == 32 for k in master["keys"] + slave["keys"])
    # a handshake completed under every key: WireGuard mixes the PSK into it, so it proves
    # both ends held the same one
    for key in master["keys"]:
        assert key["handshake_at"] is not None and key["handshake_at"] >= key["installed_at"] - 1e-3
    assert master["all_matched"]
    ping = master["ping"]
    assert ping["sent"] >= 100, ping
    assert ping["lost"] == 0, ping  # a veth loses nothing, and a key change must not either
