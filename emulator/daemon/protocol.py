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
    cpu_s: float = 0.0  # CPU seconds the daemon process has used (for realtime factors)


class Error(msgspec.Struct, tag="error"):
    """The daemon refused a frame. ``fatal`` errors are followed by closing the connection."""

    code: str  # bad_frame | too_large | unauthenticated | bad_version | not_allowed | unknown
    # | bad_request (invalid field values, non-fatal) | no_free_slot | empty_slot | expired
    # | too_large_register (state level, non-fatal) | late (a switch after the budget)
    message: str
    id: int | None = None
    fatal: bool = False
    t: float | None = None  # emulated time the daemon refused the request (set for late)


# ---------------------------------------------------------------------------------------------
# State level (entanglement). A qubit is named by ``QubitRef(node, slot)``; a node may act only
# on its own (``not_allowed`` otherwise). Replies carry the emulated time ``t`` at which the
# daemon acted, so a node knows how long its own qubits were stored. No message ever reveals a
# state or a fidelity: nodes estimate fidelity by measuring (docs/entanglement.md, "Runtime").


class QubitRef(msgspec.Struct, array_like=True, frozen=True):
    """Handle of one memory slot: ``[node, slot]`` on the wire."""

    node: str
    slot: int


class EntangleStart(msgspec.Struct, tag="entangle_start", forbid_unknown_fields=True):
    """Either end of an entanglement link starts heralded generation on it (idempotent).

    Generation runs while each end holds fewer halves of this link (heralded or not, not yet
    freed) than its limit: the sender's ``max_pending`` caps its own end (0 = the link's even
    share of the node's slots, the default for both ends)."""

    id: int
    link: str
    max_pending: int = 0


class EntangleStarted(msgspec.Struct, tag="entangle_started"):
    id: int
    link: str
    p_success: float  # heralding probability per attempt
    attempt_rate_hz: float
    delay_s: float  # emission -> herald at both ends
    max_pending: int


class EntangleStop(msgspec.Struct, tag="entangle_stop", forbid_unknown_fields=True):
    id: int
    link: str


class PairAwait(msgspec.Struct, tag="pair_await", forbid_unknown_fields=True):
    """Long poll: reply when at least one pair of ``link`` has been heralded at this node
    (up to ``max`` of them), or empty after ``timeout_s`` emulated seconds."""

    id: int
    link: str
    max: int = 1024
    timeout_s: float = 1.0


class DeliveredPair(msgspec.Struct, array_like=True, frozen=True):
    """One heralded pair as one end sees it: its own half only, no state information."""

    pair: int  # pair id, the same at both ends
    slot: int  # slot of this node that holds its half
    t_stored: float  # emulated time the half entered the memory (emission)
    t_herald: float  # emulated time the herald reached this node


class PairsDelivered(msgspec.Struct, tag="pairs_delivered"):
    id: int
    link: str
    peer: str
    pairs: list[DeliveredPair]


class QubitPrepare(msgspec.Struct, tag="qubit_prepare", forbid_unknown_fields=True):
    """Prepare a fresh qubit ``cos(theta/2)|0> + exp(i phi) sin(theta/2)|1>`` in a free slot
    of this node (teleportation input; the node knows what it prepared)."""

    id: int
    theta: float = 0.0
    phi: float = 0.0


class Prepared(msgspec.Struct, tag="prepared"):
    id: int
    qubit: QubitRef
    t: float


class QubitGate(msgspec.Struct, tag="qubit_gate", forbid_unknown_fields=True):
    """Gate ``I X Y Z H S SDG RX RY RZ`` or ``ROT`` (``exp(-i angle/2 n.sigma)`` about
    ``axis`` n) on one qubit, ``angle`` in radians, or ``CNOT CZ`` (``qubits[0]`` is the
    control) on this node's qubits."""

    id: int
    gate: str
    qubits: list[QubitRef]
    angle: float = 0.0
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)


class QubitMeasure(msgspec.Struct, tag="qubit_measure", forbid_unknown_fields=True):
    """Destructive measurement of each qubit in its basis (``"Z" "X" "Y"``, one per qubit or
    one for all); frees the slots."""

    id: int
    qubits: list[QubitRef]
    bases: list[str]


class Measured(msgspec.Struct, tag="measured"):
    id: int
    outcomes: bytes  # one byte (0 = +1 eigenstate, 1 = -1) per qubit, in request order
    t: float


class BellMeasure(msgspec.Struct, tag="bell_measure", forbid_unknown_fields=True):
    """Bell-state measurement of two of this node's qubits (a swap when they hold halves of
    two pairs); frees both. Outcome convention: ``emulator.daemon.states``."""

    id: int
    q1: QubitRef
    q2: QubitRef


class BellResult(msgspec.Struct, tag="bell_result"):
    id: int
    m1: int  # phase bit
    m2: int  # parity bit; the far end corrects with X**m2 Z**m1
    t: float


class QubitDiscard(msgspec.Struct, tag="qubit_discard", forbid_unknown_fields=True):
    id: int
    qubits: list[QubitRef]


class Done(msgspec.Struct, tag="done"):
    """Success of a request that returns nothing else (gate, discard, stop)."""

    id: int
    t: float


class MemoryStatsRequest(msgspec.Struct, tag="memory_stats", forbid_unknown_fields=True):
    id: int


class MemoryStats(msgspec.Struct, tag="memory_stats_reply"):
    """Emulator telemetry: measurements per node (routers must show 0), pairs per link."""

    id: int
    measurements: dict[str, int]
    pairs_generated: dict[str, int]
    pairs_expired: int
    free_slots: dict[str, int]


# ---------------------------------------------------------------------------------------------
# Qubits that travel (``links.flight``): a node sends one of its qubits into a fibre; the
# receiving end is told when it arrives (``PayloadArrived``, pushed to the node that sent
# ``FlightOpen`` for that link) with a noisy readout of the fibre's polarisation rotation; a
# router then switches it out of its delay line (optionally through a waveplate) before its
# switch budget ends. Docs: docs/protocol.md, "Qubits in flight".


class FlightOpen(msgspec.Struct, tag="flight_open", forbid_unknown_fields=True):
    """This end wants ``PayloadArrived`` pushes for payloads reaching it over ``link``."""

    id: int
    link: str


class QubitSend(msgspec.Struct, tag="qubit_send", forbid_unknown_fields=True):
    """Send the sender's own ``qubit`` into fibre ``link`` (its slot is freed at once)."""

    id: int
    link: str
    qubit: QubitRef


class Sent(msgspec.Struct, tag="sent"):
    id: int
    link: str
    payload: int  # id of the payload in the run (the header's payload descriptor)
    t: float  # emulated time it entered the fibre


class QubitPrepareSend(msgspec.Struct, tag="qubit_prepare_send", forbid_unknown_fields=True):
    """Prepare ``cos(theta/2)|0> + exp(i phi) sin(theta/2)|1>`` straight into fibre ``link``
    (as ``QubitPrepare`` then ``QubitSend``, in one request and without a memory slot of the
    sender's); answered by ``Sent``."""

    id: int
    link: str
    theta: float = 0.0
    phi: float = 0.0


class PayloadSwitch(msgspec.Struct, tag="payload_switch", forbid_unknown_fields=True):
    """Set the switch of this node's delay line: the payload leaves on ``link`` when its
    spool ends, after the waveplate ``exp(-i |r|/2 r.sigma/|r|)`` if ``rotation`` r is given
    (a rotation vector in rad). Only for a payload now in this node's delay line."""

    id: int
    link: str
    payload: int
    rotation: tuple[float, float, float] | None = None


class Switched(msgspec.Struct, tag="switched"):
    id: int
    payload: int
    t: float  # emulated time the switch was set
    t_depart: float  # emulated time the payload leaves the delay line


class PayloadStore(msgspec.Struct, tag="payload_store", forbid_unknown_fields=True):
    """The payload in this node's delay line (arrived on ``link``) is for this node: into a
    memory slot now, after the waveplate ``rotation`` if given (as for ``PayloadSwitch``)."""

    id: int
    link: str
    payload: int
    rotation: tuple[float, float, float] | None = None


class Stored(msgspec.Struct, tag="stored"):
    id: int
    payload: int
    slot: int  # this node's slot that holds it now
    t: float


class PayloadArrived(msgspec.Struct, tag="payload_arrived"):
    """Pushed to the receiving end of ``link``: the payload reached it at ``t`` (``present``)
    or was lost in the fibre (``present`` false, pushed at its would-be arrival). Held in the
    delay line until ``deadline`` (``slot`` = -1) or stored in memory ``slot``. ``reference``:
    rotation vector (rad) of this end's noisy readout of the fibre's rotation, from the
    header's reference light (the node corrects with its inverse)."""

    link: str
    payload: int
    t: float
    present: bool
    slot: int = -1
    deadline: float = 0.0
    reference: tuple[float, float, float] = (0.0, 0.0, 0.0)


class PayloadsArrived(msgspec.Struct, tag="payloads_arrived"):
    """Several ``PayloadArrived`` of one link in one frame, in their order: what had queued for
    the receiving end when the daemon sent the first (one frame, not one each, under load)."""

    link: str
    arrivals: list[PayloadArrived]


Request = (Hello | SourceStart | SourceStop | DetectorOpen | StatsRequest | EntangleStart
           | EntangleStop | PairAwait | QubitPrepare | QubitGate | QubitMeasure | BellMeasure
           | QubitDiscard | MemoryStatsRequest | FlightOpen | QubitSend | PayloadSwitch
           | PayloadStore | QubitPrepareSend)
Reply = (Welcome | SourceStarted | SourceStopped | DetectorOpened | Detections | Stats | Error
         | EntangleStarted | PairsDelivered | Prepared | Measured | BellResult | Done
         | MemoryStats | Sent | Switched | Stored | PayloadArrived | PayloadsArrived)

request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)
encoder = msgspec.msgpack.Encoder()
