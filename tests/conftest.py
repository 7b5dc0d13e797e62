"""Fixtures shared by test modules of several areas (one definition instead of copies)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
async def broker(tmp_path):
    """An embedded MQTT broker for one test; its process is checked gone afterwards."""
    from emulator.broker import open_broker

    async with open_broker("embedded", tmp_path, tmp_path / "broker.log") as info:
        yield info
    with pytest.raises(ProcessLookupError):
        os.kill(info.pid, 0)
