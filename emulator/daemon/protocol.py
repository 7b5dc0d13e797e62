"""Node <-> quantum daemon messages: the one place this wire format is defined.

Every frame (see ``emulator.wire``) holds one MessagePack map tagged by its ``type`` field.
The first frame a node sends is ``Hello`` with its token; the daemon answers ``Welcome`` or an
``Error`` and closes. Requests carry an ``id`` the reply echoes. ``Detections`` are pushed
unrequested to the receiving node of a link, and only to it. Documented in docs/protocol.md.
"""

from __future__ import annotations

import msgspec

PROTOCOL_VERSION = 1
MAX_FRAME = 8 * 1024 * 1024


class Hello(msgspec.Struct, tag="hello", forbid_unknown_fields=True):
    version: int
    node: str
    token: str


class Welcome(msgspec.Struct, tag="welcome"):
    version: int
    node: str
    t0: float
    time_scale: float


class SourceStart(msgspec.Struct, tag="source_start", forbid_unknown_fields=True):
    """Sender asks to start its pulse source on ``link``; slot choices come from ``prf_key``."""

    id: int
    link: str
    prf_key: bytes
    # optional decoy settings: mean photon numbers and their probabilities (PRF intensity
    # index i <-> intensities[i]); empty means the link's single source.mu with probability 1
    intensities: list[float] = []
    probabilities: list[float] = []


class SourceStarted(msgspec.Struct, tag="source_started"):
    id: int
    link: str
    t_start: float  # emulated time of slot 0
    rate_hz: float
    intensities: list[float] = []  # in effect (after defaults)
    probabilities: list[float] = []
    slots_per_frame: int = 0


class SourceStop(msgspec.Struct, tag="source_stop", forbid_unknown_fields=True):
    id: int
    link: str


class SourceStopped(msgspec.Struct, tag="source_stopped"):
    id: int
    link: str
    pulses: int  # slots [0, pulses) were emitted


class DetectorOpen(msgspec.Struct, tag="detector_open", forbid_unknown_fields=True):
    """Receiver asks for its detection records on ``link``."""

    id: int
    link: str


class DetectorOpened(msgspec.Struct, tag="detector_opened"):
    id: int
    link: str


class Detections(msgspec.Struct, tag="detections"):
    """Receiver's clicks for slots [frame_start, frame_end): little-endian uint64 slots,
    uint8 basis (0 = Z, 1 = X) and uint8 outcome per click. ``last`` ends the stream."""

    link: str
    frame_start: int
    frame_end: int
    slot: bytes
    basis: bytes
    outcome: bytes
    last: bool = False


class StatsRequest(msgspec.Struct, tag="stats", forbid_unknown_fields=True):
    id: int


class Stats(msgspec.Struct, tag="stats_reply"):
    id: int
    lag_s: float  # worst lag of frame processing behind the emulated clock
    frames: int
    pulses: int
    detections: int
    lag_recent_s: float = 0.0  # lag of the most recent frame (worst over links)
    dropped_frames: int = 0  # Detections dropped from a full buffer (detector never opened)


class Error(msgspec.Struct, tag="error"):
    """The daemon refused a frame. ``fatal`` errors are followed by closing the connection."""

    code: str  # bad_frame | too_large | unauthenticated | bad_version | not_allowed | unknown
    # | bad_request (invalid field values, non-fatal)
    message: str
    id: int | None = None
    fatal: bool = False


Request = Hello | SourceStart | SourceStop | DetectorOpen | StatsRequest
Reply = Welcome | SourceStarted | SourceStopped | DetectorOpened | Detections | Stats | Error

request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)
encoder = msgspec.msgpack.Encoder()
