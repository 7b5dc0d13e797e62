"""The WireGuard + QKD example between two hand-made namespaces, keys from two real KMEs.

Checks what examples/wireguard-qkd promises without ``qnet run``: every key change, the same
32-byte key at both ends (by hash), a completed handshake under each key, and an ICMP stream
through the tunnel that loses nothing on a lossless veth."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
import time
from functools import partial
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
        assert key["handshake_at"] is not None and key["handshake_at"] > key["installed_at"]
    assert master["all_matched"]
    ping = master["ping"]
    assert ping["sent"] >= 100, ping
    assert ping["lost"] == 0, ping  # a veth loses nothing, and a key change must not either


def load_wg_device():
    spec = importlib.util.spec_from_file_location("wg_device", ROTATE.parent / "wg_device.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def handshake_within(wg, ifname: str, peer_public: bytes, since: float, namespace: str,
                           peer_ip: str, timeout_s: float) -> float | None:
    """Send a datagram into the tunnel from ``namespace``; the newest handshake, if one
    completes after ``since`` within ``timeout_s``."""
    await trio.run_process(["ip", "netns", "exec", namespace, sys.executable, "-c",
                            "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                            f".sendto(b'x', ('{peer_ip}', 9))"])
    with trio.move_on_after(timeout_s):
        while True:
            at = await wg.last_handshake(ifname, peer_public)
            if at is not None and at >= since:
                return at
            await trio.sleep(0.05)
    return None


def test_a_handshake_needs_the_same_psk_at_both_ends() -> None:
    """Why a completed handshake per key proves both ends installed the same key: with
    different PSKs none completes; after the same PSK and a forced rekey one does."""
    wg = load_wg_device()
    tag = secrets.token_hex(2)
    names = (f"wqa{tag}", f"wqb{tag}")
    keys = [wg.new_keypair(), wg.new_keypair()]

    async def main(pair) -> tuple:
        async with trio.open_nursery() as nursery:
            for i in (0, 1):
                await nursery.start(partial(run_device, pair.names[i], names[i]))
            for i in (0, 1):
                await wg.uapi_set(names[i], [
                    f"private_key={keys[i][0].hex()}", "listen_port=51820",
                    f"public_key={keys[1 - i][1].hex()}",
                    f"preshared_key={(bytes([i + 1]) * 32).hex()}",
                    f"endpoint={pair.addresses[1 - i]}:51820",
                    f"allowed_ip=10.78.0.{2 - i}/32"])
                await trio.run_process(["ip", "-n", pair.names[i], "address", "add",
                                        f"10.78.0.{i + 1}/24", "dev", names[i]])
                await trio.run_process(["ip", "-n", pair.names[i], "link", "set", names[i], "up"])
            start = time.time()
            mismatched = await handshake_within(wg, names[0], keys[1][1], start, pair.names[0],
                                                "10.78.0.2", 3.0)
            same = os.urandom(32)
            for i in (0, 1):
                await wg.uapi_set(names[i], [f"public_key={keys[1 - i][1].hex()}",
                                             f"preshared_key={same.hex()}"])
            await wg.force_handshake(names[0], keys[0][0])
            start = time.time()
            matched = await handshake_within(wg, names[0], keys[1][1], start, pair.names[0],
                                             "10.78.0.2", 8.0)
            nursery.cancel_scope.cancel()
        return mismatched, matched

    async def run_device(namespace: str, ifname: str, *, task_status) -> None:
        process = await trio.lowlevel.open_process(
            ["ip", "netns", "exec", namespace, "wireguard-go", "-f", ifname],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with trio.fail_after(10):
                while not (wg.UAPI_DIR / f"{ifname}.sock").exists():  # bounded: 10 s
                    await trio.sleep(0.05)
            task_status.started()
            await process.wait()
        finally:
            process.terminate()
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await process.wait()

    with veth_pair() as pair:
        mismatched, matched = trio.run(main, pair)
    assert mismatched is None, "a handshake completed with different PSKs"
    assert matched is not None, "no handshake with the same PSK"


IDLE_SCRIPT = """
import sys
import trio
import trio._core._thread_cache as thread_cache
thread_cache.IDLE_TIMEOUT = 0.2  # trio's is 10 s: a worker idle that long ends
sys.path.insert(0, sys.argv[1])
import wg_device as wg

async def main():
    async with trio.open_nursery() as nursery:
        await nursery.start(wg.run_wireguard_go, sys.argv[2])
        await trio.to_thread.run_sync(lambda: None)  # then every worker thread idles out
        await trio.sleep(1.0)
        await wg.uapi_set(sys.argv[2], ["listen_port=51820"])
        print("alive", flush=True)
        nursery.cancel_scope.cancel()

trio.run(main)
"""


def test_wireguard_go_outlives_idle_worker_threads() -> None:
    """``run_wireguard_go`` forks from the main thread: its child's death signal follows the
    forking thread, and trio's worker threads end when idle (a slave waiting > 10 s for its
    first key lost its device that way)."""
    with veth_pair() as pair:
        done = subprocess.run(
            ["ip", "netns", "exec", pair.names[0], sys.executable, "-c", IDLE_SCRIPT,
             str(ROTATE.parent), f"wqi{secrets.token_hex(2)}"],
            capture_output=True, text=True, timeout=30,
            env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "PYTHONPATH": str(ROTATE.parents[2])})
    assert done.returncode == 0 and done.stdout.split() == ["alive"], done.stderr[-3000:]
