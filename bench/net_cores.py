"""Network-layer cores in memory, one core: hybrid headers, route computation, forwarding, streams.

Reported: hybrid-header encode + decode (with HMAC-SHA256/16 both ways) per second; one
router's per-header work (verify, decide, re-MAC; median and p99 µs, no sockets); shortest
path computation (``shortest_paths``, median of repeats) on a 16-node and a 100-node mesh
(grids with ~30 % diagonals, as in tests/net); forwarding decisions per second; messages per
second through a stream sender and receiver wired back to back without loss.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from pathlib import Path

from nodes.net.forwarding import Forwarder, HeaderForwarder
from nodes.net.header import HeaderCodec, HybridHeader, PayloadDescriptor
from nodes.net.linkstate import Metric, shortest_paths
from nodes.net.messages import LinkAdvert, Lsa
from nodes.net.stream import StreamConfig, StreamReceiver, StreamSender

RESULT = Path(__file__).resolve().parent / "results" / "net_cores.json"
HEADERS = 50_000


def _rate(fn, n: int) -> float:
    t = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t)


def bench_header() -> dict:
    codec = HeaderCodec(bytes(32))
    h = HybridHeader("router-03", "router-11", flow=3, seq=12345, ttl=16,
                     timestamp_ns=987_654_321, payload=PayloadDescriptor(2, 0, 1, 77))
    wire = codec.encode(h)

    def round_trip(n: int) -> None:
        for _ in range(n):
            codec.decode(codec.encode(h))

    def decode(n: int) -> None:
        for _ in range(n):
            codec.decode(wire)

    return {"bytes": len(wire), "encode_decode_per_s": _rate(round_trip, HEADERS),
            "decode_per_s": _rate(decode, HEADERS)}


def grid_lsdb(side: int, seed: int = 7) -> dict[str, Lsa]:
    """LSAs of a side x side grid with random diagonals and lengths (every link two-way)."""
    rng = random.Random(seed)
    adverts: dict[str, list[LinkAdvert]] = {f"r{i:03d}": [] for i in range(side * side)}

    def add(a: int, b: int) -> None:
        na, nb, km = f"r{a:03d}", f"r{b:03d}", rng.choice([1.0, 2.0, 3.0, 5.0])
        adverts[na].append(LinkAdvert(nb, f"{na}-{nb}", km))
        adverts[nb].append(LinkAdvert(na, f"{na}-{nb}", km))

    for i in range(side):
        for j in range(side):
            k = i * side + j
            if j + 1 < side:
                add(k, k + 1)
            if i + 1 < side:
                add(k, k + side)
            if i + 1 < side and j + 1 < side and rng.random() < 0.3:
                add(k, k + side + 1)
    return {n: Lsa(n, 1, 0.0, tuple(a)) for n, a in adverts.items()}


def bench_spf(side: int, repeats: int = 50) -> dict:
    lsdb = grid_lsdb(side)
    metric = Metric.named("length_km")
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        routes = shortest_paths("r000", lsdb, metric)
        times.append(time.perf_counter() - t)
    assert len(routes) == side * side - 1
    links = sum(len(lsa.links) for lsa in lsdb.values()) // 2
    return {"nodes": side * side, "links": links, "median_ms": statistics.median(times) * 1e3,
            "max_ms": max(times) * 1e3}


def bench_forwarding(n: int = 200_000) -> dict:
    routes = shortest_paths("r000", grid_lsdb(10), Metric.named("length_km"))
    fw = Forwarder("r000", routes)
    dsts = list(routes)

    def run(k: int) -> None:
        for i in range(k):
            fw.decide("r099", dsts[i % len(dsts)], 9, "elsewhere")

    return {"decisions_per_s": _rate(run, n)}


def bench_header_hop(n: int = 20_000) -> dict:
    """One router's in-memory work per hybrid header: verify, decide, re-MAC (no sockets)."""
    routes = shortest_paths("r000", grid_lsdb(10), Metric.named("length_km"))
    links = {r.link for r in routes.values()} | {"in"}
    hf = HeaderForwarder(Forwarder("r000", routes), {ln: ln.encode().ljust(16, b"k")
                                                     for ln in links})
    wire = HeaderCodec(b"in".ljust(16, b"k")).encode(
        HybridHeader("r050", "r099", flow=1, seq=1, ttl=16, timestamp_ns=1))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        hf.handle(wire, "in")
        times.append(time.perf_counter() - t)
    times.sort()
    return {"median_us": times[n // 2] * 1e6, "p99_us": times[int(n * 0.99)] * 1e6,
            "per_s": n / sum(times)}


def bench_stream(n: int = 50_000) -> dict:
    sender, receiver = StreamSender(1, StreamConfig(window=256)), StreamReceiver(1, StreamConfig(window=256))

    def run(k: int) -> None:
        now = 0.0
        for i in range(k):
            sender.send(b"x" * 64)
        delivered = 0
        while delivered < k:
            now += 1e-4
            for seg in sender.segments_to_send(now):
                sender.receive_ack(receiver.receive_segment(seg), now)
            delivered += len(receiver.take())
            update = receiver.window_update()
            if update is not None:
                sender.receive_ack(update, now)

    return {"messages_per_s": _rate(run, n), "window": 256}


def main() -> dict:
    result = {"benchmark": "net_cores", "header": bench_header(),
              "spf": [bench_spf(4), bench_spf(10)], "forwarding": bench_forwarding(),
              "header_hop": bench_header_hop(),
              "stream": bench_stream()}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
