"""WireGuard preshared keys from ETSI GS QKD 014: a ``wireguard-go`` tunnel whose PSK changes
every ``--interval`` seconds to a fresh 32-byte QKD key (docs/netns.md, "WireGuard with QKD").

Run once per end as a ``[[nodes.run]]`` program in the node's namespace. The master takes
each key with ``enc_keys`` from its KME and sends only the key_ID to the slave over a TCP
control connection on the underlay; the slave fetches the same key with ``dec_keys``, installs
it and answers with the key's SHA-256; then the master installs it and forces a handshake,
which completes only if both ends hold the same PSK. Each end's last stdout line is JSON:
every key it installed (hash, times) and, on the master, the ping stream through the tunnel.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

import msgspec
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import wg_device as wg  # noqa: E402
from icmp_ping import PingStream  # noqa: E402

from nodes.apps.secure_echo.etsi014 import Etsi014Client, KmeRefused  # noqa: E402

KEY_BITS = 256  # a WireGuard PSK is 32 bytes
DISCARD_PORT = 9  # RFC 863
HANDSHAKE_TIMEOUT_S = 12.0  # wall: one lost handshake message costs REKEY_TIMEOUT = 5 s


class Hello(msgspec.Struct, tag="hello"):
    public_key: str  # base64, the sender's WireGuard static public key
    port: int  # its WireGuard UDP port


class Rotate(msgspec.Struct, tag="rotate"):
    epoch: int
    key_ID: str  # the master's enc_keys key_ID; the key itself never crosses the underlay


class Installed(msgspec.Struct, tag="installed"):
    epoch: int
    sha256: str  # of the 32-byte key the slave installed


class Done(msgspec.Struct, tag="done"):
    pass


Control = Hello | Rotate | Installed | Done


class PeerProtocolError(Exception):
    """The other end sent a valid message at the wrong time (its fault, not ours)."""


def expect(message: Control, kind: type, epoch: int | None = None) -> Control:
    if not isinstance(message, kind) or (epoch is not None and message.epoch != epoch):
        raise PeerProtocolError(f"expected {kind.__name__}"
                                f"{'' if epoch is None else f' of epoch {epoch}'}, got {message}")
    return message
ENCODER = msgspec.json.Encoder()
DECODER = msgspec.json.Decoder(Control)


class Lines:
    """JSON-line framing of the control connection (one message per line)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buffer = stream, b""

    async def send(self, message: Control) -> None:
        await self.stream.send_all(ENCODER.encode(message) + b"\n")

    async def receive(self) -> Control:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("control connection closed by the peer")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return DECODER.decode(line)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def env_suffix(node: str) -> str:
    """``<NODE>`` of qnet's per-node variables: upper case, other characters as ``_``."""
    return re.sub(r"[^A-Za-z0-9]", "_", node).upper()


def from_peer_node(args) -> None:
    """``--peer-node``: the peer's address and SAE from qnet's variables (docs/netns.md)."""
    for field, variable in (("peer_addr", "QNET_PEER_ADDR_"), ("peer_sae", "QNET_PEER_SAE_")):
        if getattr(args, field) is None and args.peer_node is not None:
            setattr(args, field, os.environ.get(variable + env_suffix(args.peer_node)))
        if getattr(args, field) is None:
            raise SystemExit(f"--{field.replace('_', '-')} or --peer-node (with "
                             f"{variable}<NODE> set) is needed")


async def take_key(kme: Etsi014Client, slave_sae: str, wait_s: float) -> tuple[str, bytes]:
    """One new 32-byte key shared with ``slave_sae``; waits (bounded) while the KME has none
    yet (503: the QKD link has not delivered its first block)."""
    with trio.fail_after(wait_s):
        while True:
            try:
                [(key_id, key)] = await fetch(kme.enc_keys, slave_sae, 1, KEY_BITS)
                return key_id, key
            except KmeRefused as refused:
                if refused.status != 503:
                    raise
                log(f"KME has no key for {slave_sae} yet: {refused}")
                await trio.sleep(0.5)


async def connect_control(address: str, port: int, timeout_s: float) -> trio.SocketStream:
    """The master dials the slave, which may start a little later (bounded retries)."""
    with trio.fail_after(timeout_s):
        while True:
            try:
                return await trio.open_tcp_stream(address, port)
            except OSError:
                await trio.sleep(0.2)


async def accept_control(address: str, port: int) -> trio.SocketStream:
    listeners = await trio.open_tcp_listeners(port, host=address)
    try:
        return await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()


class Tunnel:
    """This end's interface and peer; every PSK it installs is recorded in ``keys``."""

    def __init__(self, args) -> None:
        self.args = args
        self.ifname = args.ifname
        self.private, self.public = wg.new_keypair()
        self.peer_public = b""
        self.keys: list[dict] = []

    async def configure(self, peer: Hello, psk: bytes) -> None:
        self.peer_public = base64.b64decode(peer.public_key)
        await wg.uapi_set(self.ifname, [
            f"private_key={self.private.hex()}", f"listen_port={self.args.wg_port}",
            f"public_key={self.peer_public.hex()}", f"preshared_key={psk.hex()}",
            f"endpoint={self.args.peer_addr}:{peer.port}", "replace_allowed_ips=true",
            f"allowed_ip={self.args.peer_tunnel_addr}/32",
            f"persistent_keepalive_interval={self.args.keepalive}"])
        for command in (["ip", "address", "add", self.args.tunnel_addr, "dev", self.ifname],
                        ["ip", "link", "set", self.ifname, "up"]):
            await trio.run_process(command)

    async def install(self, epoch: int, key_id: str, psk: bytes) -> dict:
        await wg.uapi_set(self.ifname, [f"public_key={self.peer_public.hex()}",
                                     f"preshared_key={psk.hex()}"])
        entry = {"epoch": epoch, "key_ID": key_id, "sha256": hashlib.sha256(psk).hexdigest(),
                 "bytes": len(psk), "installed_at": time.time()}
        self.keys.append(entry)
        log(f"epoch {epoch}: installed PSK sha256={entry['sha256'][:16]} (key_ID {key_id})")
        return entry

    async def handshake_after(self, since: float) -> float | None:
        """Send one datagram into the tunnel (a handshake starts on traffic) and wait, bounded,
        for a completed handshake newer than ``since``: its time, or None."""
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.sendto(b"rekey", (self.args.peer_tunnel_addr, DISCARD_PORT))
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            while True:
                at = await wg.last_handshake(self.ifname, self.peer_public)
                if at is not None and at > since:  # completed under the key set at since
                    return at
                await trio.sleep(0.02)
        return None


async def fetch(call, *args):
    return await trio.to_thread.run_sync(call, *args)


async def master(args, tunnel: Tunnel, kme: Etsi014Client, control: Lines) -> dict:
    await control.send(Hello(wg.b64(tunnel.public), args.wg_port))
    peer = expect(await control.receive(), Hello)
    ping = PingStream(args.peer_tunnel_addr, args.ping_interval, args.ping_timeout)
    matches = []
    async with trio.open_nursery() as nursery:
        for epoch in range(args.rotations + 1):
            started = trio.current_time()
            key_id, psk = await take_key(kme, args.peer_sae, args.key_wait)
            await control.send(Rotate(epoch, key_id))
            answer = expect(await control.receive(), Installed, epoch)
            if epoch == 0:
                await tunnel.configure(peer, psk)
                entry = await tunnel.install(epoch, key_id, psk)
            else:
                entry = await tunnel.install(epoch, key_id, psk)
                await wg.force_handshake(tunnel.ifname, tunnel.private)
            entry["handshake_at"] = await tunnel.handshake_after(entry["installed_at"])
            entry["peer_sha256"] = answer.sha256
            matches.append(answer.sha256 == entry["sha256"] and entry["handshake_at"] is not None)
            log(f"epoch {epoch}: peer hash {'matches' if matches[-1] else 'DIFFERS'}, "
                f"handshake at {entry['handshake_at']}")
            if epoch == 0:  # the schedule starts once the tunnel is up
                started = trio.current_time()
                if args.ping_interval > 0:
                    nursery.start_soon(ping.run)
            # the next key --interval after this one, but never before its handshake: a lost
            # handshake message (a 5 s retry) postpones the rotation instead of stacking two
            await trio.sleep_until(started + args.interval)
        ping.stop()
    await control.send(Done())
    return {"key_changes": args.rotations, "all_matched": all(matches),
            "ping": ping.summary() if args.ping_interval > 0 else None}


async def slave(args, tunnel: Tunnel, kme: Etsi014Client, control: Lines) -> dict:
    peer = expect(await control.receive(), Hello)
    await control.send(Hello(wg.b64(tunnel.public), args.wg_port))
    while not isinstance(message := await control.receive(), Done):
        expect(message, Rotate)
        psk = (await fetch(kme.dec_keys, args.peer_sae, [message.key_ID]))[message.key_ID]
        if message.epoch == 0:
            await tunnel.configure(peer, psk)
        entry = await tunnel.install(message.epoch, message.key_ID, psk)
        await control.send(Installed(message.epoch, entry["sha256"]))
    return {"key_changes": len(tunnel.keys) - 1}


async def main(args) -> dict:
    kme = Etsi014Client.from_environment()
    tunnel = Tunnel(args)
    async with trio.open_nursery() as nursery:
        await nursery.start(wg.run_wireguard_go, args.ifname)
        if args.role == "master":
            stream = await connect_control(args.peer_addr, args.control_port, 30.0)
        else:
            stream = await accept_control(args.listen_addr, args.control_port)
        async with stream:
            run = master if args.role == "master" else slave
            result = await run(args, tunnel, kme, Lines(stream))
        nursery.cancel_scope.cancel()
    kme.close()
    return {"role": args.role, "node": os.environ.get("QNET_NODE"), "interface": args.ifname,
            "keys": tunnel.keys, **result}


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["master", "slave"], required=True)
    parser.add_argument("--peer-node", help="the peer's qnet node (gives address and SAE)")
    parser.add_argument("--peer-addr", help="the peer's underlay IP address")
    parser.add_argument("--listen-addr", default="0.0.0.0", help="slave: control listen IP")
    parser.add_argument("--tunnel-addr", required=True, help="this end's tunnel IP/prefix")
    parser.add_argument("--peer-tunnel-addr", required=True, help="the peer's tunnel IP")
    parser.add_argument("--peer-sae", help="the other end's SAE id")
    parser.add_argument("--key-wait", type=float, default=30.0,
                        help="master: seconds to wait for the KME's first key")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between keys")
    parser.add_argument("--rotations", type=int, default=3, help="key changes after the first")
    parser.add_argument("--ifname", help="default wq-<node> (UAPI sockets share /var/run, so "
                        "names differ between nodes)")
    parser.add_argument("--wg-port", type=int, default=51820)
    parser.add_argument("--control-port", type=int, default=51821)
    parser.add_argument("--keepalive", type=int, default=0, help="persistent keepalive, s")
    parser.add_argument("--ping-interval", type=float, default=0.05,
                        help="master: ICMP echo interval through the tunnel (0: none)")
    parser.add_argument("--ping-timeout", type=float, default=6.0)
    args = parser.parse_args(argv)
    from_peer_node(args)
    if args.ifname is None:
        label = re.sub(r"[^A-Za-z0-9_-]", "", os.environ.get("QNET_NODE", args.role))
        args.ifname = f"wq-{label}"[:15]
    return args


if __name__ == "__main__":
    print(json.dumps(trio.run(main, parse_args())), flush=True)
