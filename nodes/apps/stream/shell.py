"""Node side of ``classical.stream``: ``a`` paces messages into a routed stream, ``b`` checks
their order and timing as they are delivered."""

from __future__ import annotations

import struct

import numpy as np
import trio

from nodes.apps.stream.spec import HEADER_BYTES, StreamApp
from nodes.sdk import NodeContext

_HEADER = struct.Struct(">Qd")


async def run(node: NodeContext, app: StreamApp) -> list[dict]:
    if node.net is None:
        raise RuntimeError("classical.stream needs the routed plane (node.net)")
    if node.name == app.a:
        return [await _send(node, app)]
    return [await _receive(node, app)]


async def _send(node: NodeContext, app: StreamApp) -> dict:
    """Write at ``rate_hz`` once there is a route; then wait for the acks until the end."""
    net, clock = node.net, node.clock
    entry: dict = {"role": "sender", "src": app.a, "dst": app.b, "sent": 0}
    t_stop = node.t_end - app.stop_before_end_s
    await clock.sleep_until(node.t_start + app.start_s)
    with trio.move_on_at(clock.deadline(t_stop)):
        route = await net.wait_route(app.b)
        entry["path"] = "-".join(route.path)
    if "path" not in entry:
        entry["error"] = "no route to the destination before the end"
        return entry
    stream = await net.open_stream(app.b, app.port)
    t0, pad = clock.now(), bytes(app.size_bytes - HEADER_BYTES)
    entry["started_at_s"] = t0 - node.t_start
    i = 0
    while (t := t0 + i / app.rate_hz) < t_stop:
        await clock.sleep_until(t)
        stream.send(_HEADER.pack(i, clock.now()) + pad)
        i += 1
        entry["sent"] = i
        if i % 256 == 0:
            node.partial({**entry, **stream.sender.stats})
    with trio.move_on_at(clock.deadline(node.t_end)):
        await stream.wait_acked()
    route = net.route(app.b)
    entry["path_at_end"] = "-".join(route.path) if route is not None else ""
    stats = stream.sender.stats
    entry.update(acked=stats["acked"], transmissions=stats["transmissions"],
                 retransmitted=stats["retransmitted"], timeouts=stats["timeouts"],
                 reroutes=stats["reroutes"], all_acked=stream.sender.idle)
    return entry


async def _receive(node: NodeContext, app: StreamApp) -> dict:
    """Until the end: take every delivered message, check its index, time the gaps."""
    clock = node.clock
    seen: set[int] = set()
    entry: dict = {"role": "receiver", "src": app.a, "dst": app.b, "delivered": 0,
                   "duplicates": 0, "out_of_order": 0, "max_gap_ms": 0.0}
    latencies: list[float] = []
    last_index, last_at = -1, None
    stream = None
    with trio.move_on_at(clock.deadline(node.t_end)):
        stream = await node.net.accept_stream(app.port)
        while True:
            data = await stream.receive()
            now = clock.now()
            index, sent_at = _HEADER.unpack_from(data)
            if index in seen:
                entry["duplicates"] += 1
                continue
            seen.add(index)
            if index != last_index + 1:
                entry["out_of_order"] += 1
            last_index = index
            latencies.append(now - sent_at)
            if last_at is not None:
                entry["max_gap_ms"] = max(entry["max_gap_ms"], 1e3 * (now - last_at))
            last_at = now
            entry["delivered"] = len(seen)
    if stream is not None:
        stats = stream.receiver.stats
        entry.update(duplicates_suppressed=stats["duplicates"],
                     segments_out_of_order=stats["out_of_order"])
    if latencies:
        entry.update(latency_ms_median=float(1e3 * np.median(latencies)),
                     latency_ms_max=float(1e3 * max(latencies)))
    return entry
