"""Test helpers for reading what a process publishes over MQTT."""

from __future__ import annotations

import json

import trio


async def next_payload(mqtt, topic: str, timeout_s: float = 10.0) -> dict:
    """The JSON payload of the next message on ``topic`` (others skipped), within ``timeout_s``."""
    with trio.fail_after(timeout_s):
        async for message in mqtt.messages():
            if message.topic == topic:
                return json.loads(message.payload)
    raise AssertionError("message stream ended")
