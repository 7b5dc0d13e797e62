"""``--capture`` in netns mode: every Ethernet frame of a wire into ``capture-<link>.pcapng``.

One pcapng section with two interfaces, one per direction (``<a> -> <b>`` is interface 0),
nanosecond timestamps: a delivered frame at the time it left the shaper for the far TAP, a
dropped one (loss, cut, queue) at the time it arrived, with the comment ``dropped by the
wire`` (Wireshark: ``frame.comment``). Written by ``emulator.pcapng.PcapngWriter``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from emulator.pcapng import PcapngWriter

DROPPED = "dropped by the wire"


class WireRecorder:
    """The frame hook of one wire (``emulator.netns.shaper.FrameHook``) writing ``path``; the
    file stops growing at ``max_bytes`` (frames beyond are counted in ``truncated``)."""

    def __init__(self, path: Path, link: str, a: str, b: str,
                 max_bytes: int = 100_000_000) -> None:
        self.writer = PcapngWriter(
            path, max_bytes=max_bytes, application="qnet wire " + link,
            interfaces=[(f"{link}:{a}->{b}", f"frames {a} sent towards {b}"),
                        (f"{link}:{b}->{a}", f"frames {b} sent towards {a}")])

    @property
    def frames(self) -> int:
        return self.writer.packets

    @property
    def truncated(self) -> int:
        return self.writer.truncated

    def __call__(self, direction: str, t: float, frame: bytes, delivered: bool) -> None:
        self.writer.write(t, frame, 0 if direction == "ab" else 1,
                          None if delivered else DROPPED)

    def close(self) -> None:
        self.writer.close()


@contextmanager
def recording(hooks: list, path: Path, link: str, a: str, b: str,
              max_bytes: int = 100_000_000) -> Iterator[WireRecorder]:
    """Add a recorder of ``path`` to ``hooks`` for the duration of the block."""
    recorder = WireRecorder(path, link, a, b, max_bytes)
    hooks.append(recorder)
    try:
        yield recorder
    finally:
        hooks.remove(recorder)
        recorder.close()
