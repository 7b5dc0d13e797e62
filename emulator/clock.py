"""Emulated time shared by every process of a run.

All processes get the same wall-clock origin ``t0`` and ``time_scale`` from the orchestrator,
so ``t_emu = (wall - t0) * time_scale`` agrees between them without any messages (DESIGN §3).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio


@dataclass(frozen=True)
class EmulatedClock:
    """Maps wall time (``time.time()``) to emulated seconds and back."""

    t0: float
    time_scale: float = 1.0

    def now(self) -> float:
        """Emulated seconds since the run's origin."""
        return (time.time() - self.t0) * self.time_scale

    def wall_at(self, t_emu: float) -> float:
        """Wall-clock time (``time.time()`` scale) at which emulated time ``t_emu`` is reached."""
        return self.t0 + t_emu / self.time_scale

    def wall_duration(self, emulated_s: float) -> float:
        """Wall seconds that ``emulated_s`` emulated seconds take (delays stretch by 1/scale)."""
        return emulated_s / self.time_scale

    async def sleep_until(self, t_emu: float) -> None:
        """Sleep until emulated time ``t_emu`` (returns at once if it has passed)."""
        await trio.sleep(max(0.0, self.wall_at(t_emu) - time.time()))
