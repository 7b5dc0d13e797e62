"""``python -m nodes.apps.secure_echo client|server``: AES-256-GCM messages keyed over ETSI 014.

A user program (``[[nodes.run]]``), its own process, using only what qnet puts in its
environment. The client takes a key from its KME (``enc_keys`` for the server's SAE), sends
``--rekey`` messages under it to the server over ``QNET_PEER_<NODE>`` (the node tunnels the
connection across the emulated network), and checks every echo; the server takes the same
key by id (``dec_keys``) from its own KME, decrypts, and answers under the same key. The last
line of the client's output is a JSON summary; it exits 0 only if every message came back
and nothing failed to decrypt.

Wire format on the connection (both directions), each frame ``u32 length | body``: the
client's first frame is its SAE id (UTF-8); then every frame is ``key_ID (36 bytes ASCII) |
nonce (12 bytes) | AES-256-GCM ciphertext+tag`` with the key_ID as associated data. Nonces
are ``direction (4 bytes: b"c2s " or b"s2c ") | counter (8 bytes)``, never reused under a key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import statistics
import struct
import sys
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nodes.apps.secure_echo.etsi014 import Etsi014Client, KmeRefused

LENGTH = struct.Struct(">I")
KEY_ID_BYTES = 36
MAX_FRAME = 1 << 20


def env_peer(node: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in node).upper()


def send_frame(sock: socket.socket, body: bytes) -> None:
    sock.sendall(LENGTH.pack(len(body)) + body)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return bytes(data)


def recv_frame(sock: socket.socket) -> bytes:
    (length,) = LENGTH.unpack(recv_exact(sock, LENGTH.size))
    if length > MAX_FRAME:
        raise ConnectionError(f"frame of {length} bytes")
    return recv_exact(sock, length)


def seal(key_id: str, key: bytes, direction: bytes, counter: int, plaintext: bytes) -> bytes:
    nonce = direction + counter.to_bytes(8, "big")
    aad = key_id.encode()
    return aad + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(frame: bytes, keys: dict[str, bytes]) -> tuple[str, bytes]:
    """(key_ID, plaintext); KeyError for an unknown key, InvalidTag for a bad frame."""
    key_id = frame[:KEY_ID_BYTES].decode()
    nonce = frame[KEY_ID_BYTES:KEY_ID_BYTES + 12]
    return key_id, AESGCM(keys[key_id]).decrypt(nonce, frame[KEY_ID_BYTES + 12:],
                                                key_id.encode())


def connect(address: str, sae: str, wait_s: float) -> socket.socket:
    """Connect through the node's tunnel and say who we are; retried until the server
    answers (the node accepts at once, the far node closes if no server listens yet)."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            sock = socket.create_connection((host, int(port)), timeout=30)
            send_frame(sock, sae.encode())
            if recv_frame(sock) == b"ok":
                return sock
            sock.close()
        except OSError:  # ConnectionError included
            pass
        if time.monotonic() > deadline:
            raise ConnectionError(f"no secure_echo server behind {address} in {wait_s:g} s")
        time.sleep(0.1)


def take_key(kme: Etsi014Client, slave: str, wait_s: float, stats: dict) -> tuple[str, bytes]:
    """One new key for ``slave``; waits (bounded) while the KME has none (503) or no pool
    with it yet (400 before a relayed pair's KMEs are peered)."""
    deadline = time.monotonic() + wait_s
    started = time.monotonic()
    while True:
        try:
            ((key_id, key),) = kme.enc_keys(slave, number=1, size=256)
            stats["key_wait_s"] += time.monotonic() - started
            return key_id, key
        except KmeRefused as exc:
            stats[f"http_{exc.status}"] = stats.get(f"http_{exc.status}", 0) + 1
            if exc.status not in (400, 503) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def client(args: argparse.Namespace) -> int:
    peer_sae = args.peer_sae or os.environ[f"QNET_PEER_SAE_{env_peer(args.peer)}"]
    kme = Etsi014Client.from_environment()
    stats: dict = {"messages": 0, "echoed": 0, "decrypt_failures": 0, "mismatches": 0,
                   "keys": 0, "key_wait_s": 0.0}
    sock = connect(os.environ[f"QNET_PEER_{env_peer(args.peer)}"], os.environ["QNET_SAE_ID"],
                   args.wait)
    rtts: list[float] = []
    sent = 0
    while sent < args.messages:
        key_id, key = take_key(kme, peer_sae, args.wait, stats)
        stats["keys"] += 1
        if args.digests:  # lets a test compare both ends' keys without printing them
            print(f"key {key_id} sha256 {hashlib.sha256(key).hexdigest()}", flush=True)
        batch = min(args.rekey, args.messages - sent)
        started = time.monotonic()
        plaintexts = [f"message {sent + i:06d} ".encode() + os.urandom(args.size)
                      for i in range(batch)]
        for i, plaintext in enumerate(plaintexts):
            send_frame(sock, seal(key_id, key, b"c2s ", i, plaintext))
        for plaintext in plaintexts:
            try:
                _, echoed = unseal(recv_frame(sock), {key_id: key})
            except (InvalidTag, KeyError, UnicodeDecodeError):
                stats["decrypt_failures"] += 1
                continue
            stats["echoed"] += 1
            stats["mismatches"] += echoed != plaintext
        rtts.append((time.monotonic() - started) / batch)
        sent += batch
        stats["messages"] = sent
    sock.close()
    stats["ms_per_message_median"] = 1000 * statistics.median(rtts) if rtts else None
    print(json.dumps(stats), flush=True)
    ok = stats["echoed"] == args.messages and not stats["decrypt_failures"] \
        and not stats["mismatches"]
    return 0 if ok else 1


def server(args: argparse.Namespace) -> int:
    kme = Etsi014Client.from_environment()
    host, port = os.environ["QNET_LISTEN"].rsplit(":", 1)
    listener = socket.create_server((host, int(port)))
    stats = {"connections": 0, "messages": 0, "keys": 0, "decrypt_failures": 0,
             "unknown_keys": 0}

    def stop(signum, frame) -> None:
        print(json.dumps(stats), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"listening on {host}:{port}", flush=True)
    while True:
        sock, _ = listener.accept()
        stats["connections"] += 1
        keys: dict[str, bytes] = {}
        counters: dict[str, int] = {}
        try:
            master = recv_frame(sock).decode()
            send_frame(sock, b"ok")
            while True:
                frame = recv_frame(sock)
                key_id = frame[:KEY_ID_BYTES].decode(errors="replace")
                if key_id not in keys:
                    try:
                        keys.update(kme.dec_keys(master, [key_id]))
                        stats["keys"] += 1
                        if args.digests:
                            print(f"key {key_id} sha256 "
                                  f"{hashlib.sha256(keys[key_id]).hexdigest()}", flush=True)
                    except KmeRefused as exc:
                        print(f"dec_keys {key_id}: {exc}", flush=True)
                        stats["unknown_keys"] += 1
                        continue
                try:
                    _, plaintext = unseal(frame, keys)
                except InvalidTag:
                    stats["decrypt_failures"] += 1
                    continue
                stats["messages"] += 1
                count = counters.get(key_id, 0)
                counters[key_id] = count + 1
                send_frame(sock, seal(key_id, keys[key_id], b"s2c ", count, plaintext))
        except (ConnectionError, OSError):
            pass
        finally:
            sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="secure_echo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    c = sub.add_parser("client")
    c.add_argument("--peer", required=True, help="the node whose secure_echo server to reach")
    c.add_argument("--peer-sae", help="the server's SAE id (default QNET_PEER_SAE_<PEER>)")
    c.add_argument("--messages", type=int, default=1000)
    c.add_argument("--rekey", type=int, default=50, help="messages per key")
    c.add_argument("--size", type=int, default=64, help="random bytes per message")
    c.add_argument("--wait", type=float, default=60.0,
                   help="seconds to wait for the server and for keys")
    s = sub.add_parser("server")
    for role in (c, s):
        role.add_argument("--digests", action="store_true",
                          help="print each key's id and SHA-256 (not the key)")
    args = parser.parse_args()
    return client(args) if args.role == "client" else server(args)


if __name__ == "__main__":
    sys.exit(main())
