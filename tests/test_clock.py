"""EmulatedClock under trio's MockClock: sleeps land at the right emulated time at several
time scales, deadlines convert between the source clock and trio's, and the default source is
the system-wide monotonic clock."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from emulator.clock import EmulatedClock


@pytest.mark.parametrize("time_scale", [0.05, 0.5, 1.0, 4.0, 1000.0])
def test_sleeps_land_at_the_emulated_time(time_scale):
    landed: list[tuple[float, float]] = []

    async def main() -> None:
        clock = EmulatedClock(trio.current_time() - 2.0, time_scale, source=trio.current_time)
        start = clock.now()
        assert start == pytest.approx(2.0 * time_scale)
        previous = start
        for target in (start + 0.25, start + 1.0, start + 7.5):
            before = trio.current_time()
            await clock.sleep_until(target)
            landed.append((clock.now(), target))
            # the wall time it took is the emulated span stretched by 1 / time_scale
            assert trio.current_time() - before == pytest.approx((target - previous) / time_scale)
            previous = target
        await clock.sleep_until(start)  # in the past: returns at once
        assert clock.now() == pytest.approx(start + 7.5)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    for now, target in landed:
        assert now == pytest.approx(target, abs=1e-9)


def test_deadline_and_wall_until_under_mock_clock():
    async def main() -> None:
        clock = EmulatedClock(trio.current_time(), 0.1, source=trio.current_time)
        assert clock.wall_until(1.0) == pytest.approx(10.0)
        with trio.move_on_at(clock.deadline(0.5)):
            await trio.sleep_forever()
        assert clock.now() == pytest.approx(0.5)
        assert clock.wall_until(0.2) == 0.0
        assert clock.wall_duration(0.3) == pytest.approx(3.0)
        assert clock.wall_at(0.5) == pytest.approx(clock.t0 + 5.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_default_source_is_monotonic_and_trio_deadlines_agree():
    clock = EmulatedClock(time.monotonic(), 2.0)
    assert clock.source is time.monotonic
    t = clock.now()
    assert 0.0 <= t < 1.0
    before = time.monotonic()
    await clock.sleep_until(t + 0.1)  # 0.05 s of wall time at scale 2
    assert clock.now() >= t + 0.1
    assert 0.04 <= time.monotonic() - before < 1.0
