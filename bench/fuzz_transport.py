"""Longer fuzz campaign against a node transport over loopback (bounded in time).

Random sessions hit Bob's listener for Alice: random bytes cut at random points, forged or
replayed hellos, valid hellos followed by garbage, resets. Invariants checked after every
batch: the transport still serves, a channel opened before the campaign still carries data,
every connection is accounted for (a fault counter, ``closed_before_hello`` or an accepted
channel), and open fds stay within the pending-channel cap. Runs for ``QNET_FUZZ_SECONDS`` (default 60):
``python -m bench fuzz_transport``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import struct
import time
from pathlib import Path

import trio

from emulator.child_config import Endpoint
from emulator.wire import HEADER, frame
from nodes.channel_hello import make_hello
from nodes.transport import MAX_PENDING, Transport

RESULT = Path(__file__).resolve().parent / "results" / "fuzz_transport.json"
HOST = "127.0.0.1"
BATCH = 200
NOT_FAULTS = {"connections", "channels_accepted"}


def _session(rng: random.Random, key: bytes, replay: bytes) -> tuple[list[bytes], bool]:
    """Chunks to send on one connection, and whether to end it with a reset."""
    kind = rng.randrange(6)
    if kind == 0:
        data = rng.randbytes(rng.randrange(0, 3000))
    elif kind == 1:
        data = HEADER.pack(rng.choice([0xFFFFFFFF, 1025, 2**25, rng.randrange(2**32)]))
    elif kind == 2:
        data = frame(make_hello(os.urandom(32), "fuzz", "alice", "bob", "x"))  # wrong key
    elif kind == 3:
        data = replay + rng.randbytes(rng.randrange(0, 100))
    elif kind == 4:  # a valid hello, then garbage on the channel nobody accepts
        data = frame(make_hello(key, "fuzz", "alice", "bob", f"f{rng.randrange(10**9)}"))
        data += rng.randbytes(rng.randrange(0, 500))
    else:  # a valid-looking frame with random msgpack-ish bytes
        body = b"\x85\xa4type\xadchannel_hello" + rng.randbytes(rng.randrange(0, 200))
        data = frame(body)
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(4)))
    points = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a], rng.random() < 0.3


async def _attack(port: int, chunks: list[bytes], reset: bool) -> None:
    with contextlib.suppress(OSError, trio.BrokenResourceError):
        stream = await trio.open_tcp_stream(HOST, port)
        with contextlib.suppress(trio.BrokenResourceError):
            for chunk in chunks:
                await stream.send_all(chunk)
        if reset:
            stream.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER,
                              struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(stream)


async def _campaign(budget: float) -> dict:
    key = os.urandom(32)
    alice = Transport("alice", run_id="fuzz", link_keys={"bob": key.hex()})
    bob = Transport("bob", run_id="fuzz", link_keys={"alice": key.hex()},
                    hello_timeout_s={"alice": 2.0})
    ready = await bob.bind()
    await alice.bind()
    port = ready["tcp"]["alice"]
    alice.peers = {"bob": Endpoint(tcp=port, udp=ready["udp"])}
    fds_before = len(os.listdir("/proc/self/fd"))
    rng = random.Random(int.from_bytes(os.urandom(8), "big"))
    sessions = batches = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bob.serve)
        dialled = await alice.connect("bob", "keep")
        accepted = await bob.accept("alice", "keep")
        replay = frame(make_hello(key, "fuzz", "alice", "bob", "keep"))  # its nonce is fresh:
        # the first use below verifies (a duplicate of "keep"), later ones are replays
        start = time.monotonic()
        while time.monotonic() - start < budget:
            async with trio.open_nursery() as attackers:
                for _ in range(BATCH):
                    attackers.start_soon(_attack, port, *_session(rng, key, replay))
            sessions += BATCH
            batches += 1
            await dialled.send(b"still here")
            with trio.fail_after(10):
                assert await accepted.receive() == b"still here"
                while True:  # every connection ends in exactly one outcome
                    c = bob.counters()
                    outcomes = sum(v for k, v in c.items() if k not in NOT_FAULTS)
                    if outcomes + c.get("channels_accepted", 0) >= c["connections"]:
                        break
                    await trio.sleep(0.01)
            assert outcomes + c["channels_accepted"] == c["connections"], c
            fds_after = len(os.listdir("/proc/self/fd"))
            # held: the kept channel's two ends and at most MAX_PENDING channels never accepted
            assert fds_after <= fds_before + 2 + MAX_PENDING, (fds_before, fds_after)
        nursery.cancel_scope.cancel()
    return {"seconds": round(time.monotonic() - start, 1), "batches": batches,
            "sessions": sessions, "counters": bob.counters(),
            "fds_before": fds_before, "fds_after": fds_after, "violations": 0}


def main() -> dict:
    budget = float(os.environ.get("QNET_FUZZ_SECONDS", "60"))
    out = trio.run(_campaign, budget)
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
