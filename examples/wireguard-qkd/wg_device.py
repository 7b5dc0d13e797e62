"""A ``wireguard-go`` interface driven over its UAPI socket: start, configure, read handshakes.

The UAPI is WireGuard's cross-platform configuration protocol (``set=1`` / ``get=1`` key=value
lines on ``/var/run/wireguard/<ifname>.sock``, https://www.wireguard.com/xplatform/); using it
directly avoids one ``wg`` process per key change.
"""

from __future__ import annotations

import base64
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from emulator.supervise import ChildProcess, terminate

UAPI_DIR = Path("/var/run/wireguard")
READY_LINE = b"UAPI listener started"
PR_SET_PDEATHSIG = 1


class UapiError(Exception):
    """wireguard-go refused a UAPI request (its errno) or closed the socket mid-answer."""


def new_keypair() -> tuple[bytes, bytes]:
    """A fresh Curve25519 static key pair: (private, public), 32 bytes each."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


async def _uapi(ifname: str, request: bytes) -> list[tuple[str, str]]:
    """One UAPI exchange: the answer's key=value pairs, errno checked and removed."""
    stream = await trio.open_unix_socket(str(UAPI_DIR / f"{ifname}.sock"))
    async with stream:
        await stream.send_all(request)
        answer = b""
        while not answer.endswith(b"\n\n"):
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise UapiError(f"{ifname}: UAPI socket closed mid-answer")
            answer += chunk
    pairs = [tuple(line.split("=", 1)) for line in answer.decode().splitlines() if "=" in line]
    errno = dict(pairs).get("errno", "0")
    if errno != "0":
        raise UapiError(f"{ifname}: UAPI errno={errno} for {request.splitlines()[1:2]}")
    return [p for p in pairs if p[0] != "errno"]


async def uapi_set(ifname: str, lines: list[str]) -> None:
    await _uapi(ifname, ("set=1\n" + "".join(f"{line}\n" for line in lines) + "\n").encode())


async def last_handshake(ifname: str, peer_public: bytes) -> float | None:
    """Unix time of the newest completed handshake with the peer (None before the first)."""
    pairs = await _uapi(ifname, b"get=1\n\n")
    current, sec, nsec = None, 0, 0
    for key, value in pairs:
        if key == "public_key":
            current = value
        elif current == peer_public.hex() and key == "last_handshake_time_sec":
            sec = int(value)
        elif current == peer_public.hex() and key == "last_handshake_time_nsec":
            nsec = int(value)
    return sec + nsec * 1e-9 if sec else None


async def force_handshake(ifname: str, private: bytes) -> None:
    """Make the next packet start a new handshake without dropping the current session.

    WireGuard has no rekey command; changing the static private key expires every peer's
    current keypair for sending (packets are staged until the new handshake completes) while it
    stays valid for receiving what the peer already sent. Setting a throw-away key and then the
    real one in one request does that and leaves the identity unchanged."""
    await uapi_set(ifname, [f"private_key={new_keypair()[0].hex()}",
                            f"private_key={private.hex()}"])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that forked it ends, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def run_wireguard_go(ifname: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """``wireguard-go -f <ifname>`` as a child of this task; started once its UAPI listens.

    Its log goes to our stderr; leaving the task (cancel) terminates it, and the TUN with it.
    Forked from this (the main) thread: the death signal follows the forking thread, and
    ``trio.lowlevel.open_process`` forks in a worker that ends after 10 idle seconds."""
    popen = subprocess.Popen(
        ["wireguard-go", "-f", ifname], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
        env={"LOG_LEVEL": "verbose", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    process = ChildProcess(popen)
    started = False
    try:
        buffer = b""
        async with trio.lowlevel.FdStream(os.dup(popen.stdout.fileno())) as output:
            popen.stdout.close()
            while chunk := await output.receive_some(65536):
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
                buffer = (buffer + chunk)[-4096:]
                if not started and READY_LINE in buffer:
                    started = True
                    task_status.started()
        code = await process.wait()
        raise RuntimeError(f"wireguard-go {ifname} exited with {code}")
    finally:
        await terminate(process, grace_s=3.0)
