"""MQTT plane throughput and broker start-up: paho driven from trio against amqtt and mosquitto.

publish_qos0: one client publishes N qos0 messages, then one qos1 message whose PUBACK proves
the broker consumed them all (per-connection order), so the rate is what the broker absorbs.
end_to_end: a subscriber in a separate process counts N messages from a publisher.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from emulator.broker import open_broker
from emulator.mqtt import open_mqtt

N = 50_000
RESULTS = Path(__file__).parent / "results" / "mqtt.json"

SUBSCRIBER = """
import sys, time, trio
from emulator.mqtt import open_mqtt
async def main(port, n):
    async with open_mqtt("127.0.0.1", port, "bench-sub") as sub:
        await sub.subscribe("bench/e2e", qos=0)
        print("subscribed", flush=True)
        got = 0; t0 = None
        with trio.move_on_after(60):
            async for m in sub.messages():
                if t0 is None: t0 = time.perf_counter()
                got += 1
                if got == n: break
        print(got, time.perf_counter() - t0, sub.dropped, flush=True)
trio.run(main, int(sys.argv[1]), int(sys.argv[2]))
"""


async def _publish_rate(port: int, n: int) -> float:
    async with open_mqtt("127.0.0.1", port, "bench-pub") as pub:
        payload = b"x" * 64
        t = time.perf_counter()
        for _ in range(n):
            await pub.publish("bench/qos0", payload)
        await pub.publish("bench/qos0", payload, qos=1)  # barrier
        return n / (time.perf_counter() - t)


async def _end_to_end(port: int, n: int) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(port), str(n)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert proc.stdout.readline().strip() == "subscribed"
        async with open_mqtt("127.0.0.1", port, "bench-pub2") as pub:
            for i in range(n):
                await pub.publish("bench/e2e", b"x" * 64)
            await pub.publish("bench/e2e", b"x" * 64, qos=1)
        got, seconds, dropped = proc.stdout.readline().split()
        return {"received": int(got), "msgs_per_s": int(got) / float(seconds),
                "dropped": int(dropped)}
    finally:
        proc.kill()
        proc.wait()


async def _one(kind: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        async with open_broker(kind, Path(tmp), Path(tmp) / "broker.log") as info:
            ready_s = time.perf_counter() - t
            rates = [await _publish_rate(info.port, N) for _ in range(3)]
            e2e = await _end_to_end(info.port, N)
    return {"ready_s": ready_s, "publish_qos0_msgs_per_s": max(rates),
            "publish_qos0_runs": rates, "end_to_end": e2e, "n": N}


def main() -> dict:
    result = {kind: trio.run(_one, kind) for kind in ("mosquitto", "embedded")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
