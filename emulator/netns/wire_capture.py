"""``--capture`` in netns mode: every Ethernet frame of a wire into ``capture-<link>.pcapng``.

One pcapng section with two interfaces, one per direction (``<a> -> <b>`` is interface 0),
nanosecond timestamps: a delivered frame at the time it left the shaper for the far TAP, a
dropped one (loss, cut, queue) at the time it arrived, with the comment ``dropped by the
wire`` (Wireshark: ``frame.comment``). Format: IETF draft-ietf-opsawg-pcapng (the blocks SHB,
IDB, EPB); written here because it is three small blocks and the shaper needs no dependency.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SHB, IDB, EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
LINKTYPE_ETHERNET = 1
OPT_END, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_NAME, IF_DESCRIPTION, IF_TSRESOL = 2, 3, 9
TSRESOL_NS = 9  # 10^-9 s per timestamp unit
DROPPED = "dropped by the wire"
FLUSH_EVERY_S = 0.5  # a killed shaper loses at most this much of its capture


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _options(options: list[tuple[int, bytes]]) -> bytes:
    if not options:
        return b""
    body = b"".join(struct.pack("<HH", code, len(value)) + _pad(value)
                    for code, value in options)
    return body + struct.pack("<HH", OPT_END, 0)


def _block(kind: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", kind, length) + body + struct.pack("<I", length)


def section_header(application: str) -> bytes:
    return _block(SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
                  + _options([(SHB_USERAPPL, application.encode())]))


def interface(name: str, description: str, snaplen: int = 0) -> bytes:
    return _block(IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen) + _options([
        (IF_NAME, name.encode()), (IF_DESCRIPTION, description.encode()),
        (IF_TSRESOL, bytes([TSRESOL_NS]))]))


def packet(interface_id: int, t: float, frame: bytes, comment: str | None = None) -> bytes:
    """An Enhanced Packet Block: the whole frame, time ``t`` (Unix seconds) in ns units."""
    ns = int(round(t * 1e9))
    head = struct.pack("<IIIII", interface_id, ns >> 32, ns & 0xFFFFFFFF, len(frame),
                       len(frame))
    return _block(EPB, head + _pad(frame)
                  + _options([(OPT_COMMENT, comment.encode())] if comment else []))


class WireRecorder:
    """The frame hook of one wire (``emulator.netns.shaper.FrameHook``) writing ``path``; the
    file stops growing at ``max_bytes`` (frames beyond are counted in ``truncated``)."""

    def __init__(self, path: Path, link: str, a: str, b: str,
                 max_bytes: int = 100_000_000) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 (closed by ``close``)
        head = (section_header("qnet wire " + link)
                + interface(f"{link}:{a}->{b}", f"frames {a} sent towards {b}")
                + interface(f"{link}:{b}->{a}", f"frames {b} sent towards {a}"))
        self.file.write(head)
        self.size, self.max_bytes = len(head), max_bytes
        self.frames = self.truncated = 0
        self._flushed = time.monotonic()

    def __call__(self, direction: str, t: float, frame: bytes, delivered: bool) -> None:
        block = packet(0 if direction == "ab" else 1, t, frame, None if delivered else DROPPED)
        if self.size + len(block) > self.max_bytes:
            self.truncated += 1
            return
        self.file.write(block)
        self.size += len(block)
        self.frames += 1
        now = time.monotonic()
        if now - self._flushed > FLUSH_EVERY_S:
            self.file.flush()
            self._flushed = now

    def close(self) -> None:
        self.file.close()


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
