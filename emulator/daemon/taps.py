"""Taps on quantum channels: the named seam for observers (and later eavesdroppers) of a link.

A link runtime calls its ``Taps`` at well-defined points: a photon frame sampled (before the
receiver sees it), a heralded pair emitted, a herald arriving at an end. Nothing is registered
by default, so by default a channel leaks nothing. Taps observe only; an attack that alters
what the receiver sees (intercept-resend) will extend this interface, not bypass it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emulator.physics.detection import FrameDetections


class Tap:
    """Observer of quantum channels; override the events of interest (defaults ignore them).

    Events are called synchronously from the daemon's link tasks with emulated times: keep
    them cheap. An exception raised by a tap is a daemon bug and ends the run (exit 3)."""

    def photon_frame(self, link: str, slot_start: int, slot_end: int,
                     detections: FrameDetections, t_due: float) -> None:
        """Slots [slot_start, slot_end) of ``link`` were sampled; arrivals due by ``t_due``."""

    def pair_emitted(self, link: str, pair: int, ends: tuple[str, str], t_emit: float) -> None:
        """Heralded pair ``pair`` of ``link`` was stored at both ``ends`` at ``t_emit``."""

    def pair_heralded(self, link: str, pair: int, node: str, t_herald: float) -> None:
        """The herald of ``pair`` reached ``node`` (only sent if its half is still stored)."""


class Taps:
    """The taps registered on one daemon; link runtimes call these at their event points."""

    def __init__(self) -> None:
        self._taps: list[Tap] = []

    def add(self, tap: Tap) -> None:
        self._taps.append(tap)

    def remove(self, tap: Tap) -> None:
        self._taps.remove(tap)

    def __bool__(self) -> bool:
        return bool(self._taps)

    def photon_frame(self, link: str, slot_start: int, slot_end: int,
                     detections: FrameDetections, t_due: float) -> None:
        for tap in self._taps:
            tap.photon_frame(link, slot_start, slot_end, detections, t_due)

    def pair_emitted(self, link: str, pair: int, ends: tuple[str, str], t_emit: float) -> None:
        for tap in self._taps:
            tap.pair_emitted(link, pair, ends, t_emit)

    def pair_heralded(self, link: str, pair: int, node: str, t_herald: float) -> None:
        for tap in self._taps:
            tap.pair_heralded(link, pair, node, t_herald)
