"""pcapng files, the one writer of them: a section, its interfaces, one block per frame.

Format: IETF draft-ietf-opsawg-pcapng — Section Header Block (with a comment and the
writing application), Interface Description Blocks (Ethernet, name, description, nanosecond
timestamps), Enhanced Packet Blocks (the whole frame, an optional comment). The file stops
growing at ``max_bytes`` (frames beyond it are counted in ``truncated``) and is flushed every
``FLUSH_BYTES`` or ``FLUSH_EVERY_S``, so a killed writer loses little; ``close`` flushes it.
Used by the relays' synthesized captures (emulator/capture.py) and the netns wires
(emulator/netns/wire_capture.py).
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

SHB, IDB, EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
OPT_END, OPT_COMMENT = 0, 1
SHB_USERAPPL = 4
IF_NAME, IF_DESCRIPTION, IF_TSRESOL = 2, 3, 9
TSRESOL_NS = 9  # 10^-9 s per timestamp unit
FLUSH_BYTES = 1 << 16
FLUSH_EVERY_S = 0.5


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


def section_header(application: str, comment: str = "") -> bytes:
    options = [(OPT_COMMENT, comment.encode())] if comment else []
    return _block(SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
                  + _options(options + [(SHB_USERAPPL, application.encode())]))


def interface_description(name: str, description: str = "", snaplen: int = SNAPLEN) -> bytes:
    options = [(IF_NAME, name.encode())] if name else []
    if description:
        options.append((IF_DESCRIPTION, description.encode()))
    return _block(IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen)
                  + _options(options + [(IF_TSRESOL, bytes([TSRESOL_NS]))]))


def enhanced_packet(interface_id: int, t: float, frame: bytes,
                    comment: str | None = None) -> bytes:
    """An Enhanced Packet Block: the whole frame at time ``t`` (Unix seconds), in ns units."""
    ns = int(round(t * 1e9))
    head = struct.pack("<IIIII", interface_id, ns >> 32, ns & 0xFFFFFFFF, len(frame),
                       len(frame))
    return _block(EPB, head + _pad(frame)
                  + _options([(OPT_COMMENT, comment.encode())] if comment else []))


class PcapngWriter:
    """Frames to a pcapng file of one section, at most ``max_bytes`` of it.

    ``interfaces`` are (name, description) pairs, numbered from 0 in ``write``; the default is
    one interface named ``interface``."""

    def __init__(self, path: Path, *, max_bytes: int, comment: str = "", interface: str = "",
                 interfaces: list[tuple[str, str]] | None = None,
                 application: str = "qnet") -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.packets = self.truncated = 0
        self._unflushed = 0
        self._flushed_at = time.monotonic()
        self._file = path.open("wb")
        head = section_header(application, comment) + b"".join(
            interface_description(name, description)
            for name, description in (interfaces or [(interface, "")]))
        self._file.write(head)
        self.size = len(head)

    def write(self, ts: float, frame: bytes, interface: int = 0,
              comment: str | None = None) -> bool:
        """Append ``frame`` seen at Unix time ``ts``; False (counted) once the file is full."""
        if self._file.closed:
            return False
        block = enhanced_packet(interface, ts, frame, comment)
        if self.size + len(block) > self.max_bytes:
            self.truncated += 1
            return False
        self._file.write(block)
        self.size += len(block)
        self.packets += 1
        self._unflushed += len(block)
        if (self._unflushed >= FLUSH_BYTES
                or time.monotonic() - self._flushed_at > FLUSH_EVERY_S):
            self.flush()
        return True

    def flush(self) -> None:
        if not self._file.closed and self._unflushed:
            self._file.flush()
            self._unflushed = 0
            self._flushed_at = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
