"""Emulated time shared by every process of a run.

The orchestrator reads ``t0 = time.monotonic()`` once and hands it to every child with the
run's ``time_scale``; ``t_emu = (monotonic() - t0) * time_scale`` then agrees between all
processes without any messages (DESIGN §3), because Linux's CLOCK_MONOTONIC is one system-wide
clock (it does not step with NTP or date changes, unlike ``time.time()``). Tests inject
``source=trio.current_time`` and drive the clock with ``trio.testing.MockClock``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio


@dataclass(frozen=True)
class EmulatedClock:
    """Maps the source clock (seconds, ``time.monotonic`` by default) to emulated seconds."""

    t0: float  # source-clock reading at emulated time 0
    time_scale: float = 1.0  # emulated seconds per source second
    source: Callable[[], float] = time.monotonic

    def wall(self) -> float:
        """The source clock's reading now (same scale as ``t0`` and ``wall_at``)."""
        return self.source()

    def now(self) -> float:
        """Emulated seconds since the run's origin."""
        return (self.source() - self.t0) * self.time_scale

    def wall_at(self, t_emu: float) -> float:
        """Source-clock reading at which emulated time ``t_emu`` is reached."""
        return self.t0 + t_emu / self.time_scale

    def wall_until(self, t_emu: float) -> float:
        """Source seconds from now until emulated time ``t_emu`` (0 if it has passed)."""
        return max(0.0, self.wall_at(t_emu) - self.source())

    def wall_duration(self, emulated_s: float) -> float:
        """Wall seconds that ``emulated_s`` emulated seconds take (delays stretch by 1/scale)."""
        return emulated_s / self.time_scale

    def deadline(self, t_emu: float) -> float:
        """The trio deadline (``trio.current_time()`` scale) of emulated time ``t_emu``, for
        ``trio.move_on_at`` and cancel scopes."""
        return trio.current_time() + (self.wall_at(t_emu) - self.source())

    async def sleep_until(self, t_emu: float) -> None:
        """Sleep until emulated time ``t_emu`` (only a checkpoint if it has passed: link runtimes
        call this per attempt, mostly for past times, and trio.sleep_until then costs a cancel)."""
        wait = self.wall_at(t_emu) - self.source()
        if wait <= 0:
            await trio.lowlevel.checkpoint()
        else:
            await trio.sleep_until(trio.current_time() + wait)
