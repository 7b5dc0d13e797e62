"""Entanglement purification (BBPSSW, DEJMPS) as the keep/discard core one end runs.

``PurificationRound`` is sans-I/O: the local gates to ask its daemon for, then the parity
exchange over the classical plane that decides keep or discard. The recurrences that predict
the success probability and output state are ``emulator.physics.purification``.
"""

from __future__ import annotations

import enum
import math

import msgspec
import numpy as np

from emulator.physics import states as st
from nodes.errors import UnexpectedMessage

PROTOCOLS = ("bbpssw", "dejmps")
TWIRL_ELEMENTS = 12

# ---------------------------------------------------------------------------------------------
# Local operations an end asks its daemon for


class GateOp(msgspec.Struct, frozen=True):
    """One local operation of a round on the end's ``source``/``target`` qubits.

    ``name``: ``"rot"`` (``states.rot(axis, angle)`` on ``qubits[0]``), ``"cnot"``
    (control ``qubits[0]``, target ``qubits[1]``) or ``"measure_z"`` (on ``qubits[0]``).
    """

    name: str
    qubits: tuple[str, ...]
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    angle: float = 0.0

    def matrix(self) -> np.ndarray:
        """The gate's matrix (not defined for ``measure_z``)."""
        if self.name == "rot":
            return st.rot(self.axis, self.angle)
        if self.name == "cnot":
            return st.CNOT
        raise ValueError(f"{self.name} is not a gate")


_PAULI_AXES = {1: (0.0, 1.0, 0.0), 2: (1.0, 0.0, 0.0), 3: (0.0, 0.0, 1.0)}  # Bell order Y, X, Z


def twirl_ops(element: int, role: str, qubit: str) -> list[GateOp]:
    """Bilateral rotation ``U (x) U*`` number ``element`` (0..11) of the BBPSSW twirl on the
    pair whose local half is ``qubit``.

    ``U = P C^j`` with ``j = element // 4`` powers of the axis-cycling Clifford
    ``C = rot((1,1,1), 2pi/3)`` (X -> Y -> Z) and the Pauli ``P = BELL_PAULI[element % 4]``.
    Averaged over all 12 (the tetrahedral group, Bennett et al. 1996) any pair becomes the
    Werner state of the same fidelity. End ``"a"`` applies ``U``, end ``"b"`` its conjugate
    ``U*`` (``rot(n, t)* = rot((nx, -ny, nz), -t)``), so Phi+ is left unchanged.
    """
    if not 0 <= element < TWIRL_ELEMENTS:
        raise ValueError(f"twirl element {element} not in 0..11")
    j, pauli = divmod(element, 4)
    sign = 1.0 if role == "a" else -1.0
    ops = [GateOp("rot", (qubit,), (1.0, sign, 1.0), sign * 2 * math.pi / 3)] * j
    if pauli:
        # a Pauli is a pi rotation; P* = +-P, equal up to a global phase
        ops.append(GateOp("rot", (qubit,), _PAULI_AXES[pauli], math.pi))
    return ops


def local_ops(protocol: str, role: str,
              twirl: tuple[int, int] | None = None) -> list[GateOp]:
    """Gates then measurement one end (``role`` "a" or "b") applies in a round; BBPSSW needs
    the two independent twirl elements (source pair, target pair) chosen by the initiator."""
    if protocol not in PROTOCOLS or role not in ("a", "b"):
        raise ValueError(f"unknown protocol {protocol!r} or role {role!r}")
    sign = 1.0 if role == "a" else -1.0
    ops: list[GateOp] = []
    if protocol == "bbpssw":
        if twirl is None:
            raise ValueError("BBPSSW needs the twirl elements chosen by the initiator")
        ops += twirl_ops(twirl[0], role, "source") + twirl_ops(twirl[1], role, "target")
    else:
        ops += [GateOp("rot", (q,), (1.0, 0.0, 0.0), sign * math.pi / 2)
                for q in ("source", "target")]
    ops += [GateOp("cnot", ("source", "target")), GateOp("measure_z", ("target",))]
    return ops


# ---------------------------------------------------------------------------------------------
# Sans-I/O round: agree on the round, exchange parities, decide


class PurifyStart(msgspec.Struct, tag="purify_start", forbid_unknown_fields=True):
    """Initiator -> responder: which round, which protocol, which twirl elements (BBPSSW:
    one per pair, independent, so each pair is twirled on its own; empty for DEJMPS)."""

    round_id: int
    protocol: str
    twirl: tuple[int, ...] = ()


class PurifyParity(msgspec.Struct, tag="purify_parity", forbid_unknown_fields=True):
    """Each end -> the other: its Z outcome on the target pair."""

    round_id: int
    parity: int


class Decision(enum.Enum):
    KEEP = "keep"  # outcomes agree: the source pair is the purified pair
    DISCARD = "discard"  # outcomes differ (or the peer never answered): drop the source pair


class LocalProtocolError(Exception):
    """This end used the round wrongly (e.g. reported its parity twice)."""


class PurificationRound:
    """One end of one purification round, with no I/O.

    Use: ``PurificationRound.initiate`` (end "a", returns the ``PurifyStart`` to send) or
    ``PurificationRound.accept(start)`` (end "b"); apply ``ops`` through the daemon; feed the
    measured bit to ``local_parity`` (returns the ``PurifyParity`` to send) and the peer's
    message to ``peer_parity``; ``decision`` is set once both are known. ``handle_timer(now)``
    after ``deadline`` decides DISCARD if the peer's parity is still missing.
    """

    def __init__(self, round_id: int, protocol: str, role: str,
                 twirl: tuple[int, int] | None = None,
                 deadline: float = math.inf) -> None:
        self.round_id = round_id
        self.protocol = protocol
        self.role = role
        self.twirl = twirl
        self.ops = local_ops(protocol, role, twirl)
        self.deadline = deadline
        self.decision: Decision | None = None
        self.timed_out = False
        self._mine: int | None = None
        self._peer: int | None = None

    @classmethod
    def initiate(cls, round_id: int, protocol: str, rng: np.random.Generator,
                 deadline: float = math.inf) -> tuple[PurificationRound, PurifyStart]:
        twirl = None
        if protocol == "bbpssw":
            twirl = tuple(int(v) for v in rng.integers(TWIRL_ELEMENTS, size=2))
        rnd = cls(round_id, protocol, "a", twirl, deadline)
        return rnd, PurifyStart(round_id, protocol, twirl or ())

    @classmethod
    def accept(cls, start: PurifyStart, deadline: float = math.inf) -> PurificationRound:
        if start.protocol not in PROTOCOLS:
            raise UnexpectedMessage(f"unknown protocol {start.protocol!r}")
        twirl = None
        if start.protocol == "bbpssw":
            if len(start.twirl) != 2 or not all(0 <= t < TWIRL_ELEMENTS for t in start.twirl):
                raise UnexpectedMessage(f"bad twirl elements {start.twirl}")
            twirl = (start.twirl[0], start.twirl[1])
        return cls(start.round_id, start.protocol, "b", twirl, deadline)

    def local_parity(self, bit: int) -> PurifyParity:
        """Record this end's measured target bit; returns the message for the peer."""
        if self._mine is not None:
            raise LocalProtocolError("local parity already given")
        if bit not in (0, 1):
            raise LocalProtocolError(f"parity must be 0 or 1, got {bit!r}")
        self._mine = bit
        self._decide()
        return PurifyParity(self.round_id, bit)

    def peer_parity(self, msg: PurifyParity) -> Decision | None:
        """Take the peer's parity; returns the decision if both are now known."""
        if msg.round_id != self.round_id:
            raise UnexpectedMessage(f"parity for round {msg.round_id}, expected {self.round_id}")
        if msg.parity not in (0, 1):
            raise UnexpectedMessage(f"parity must be 0 or 1, got {msg.parity!r}")
        if self._peer is not None:
            raise UnexpectedMessage("peer parity received twice")
        if self.decision is not None:  # already timed out; a late answer changes nothing
            return self.decision
        self._peer = msg.parity
        self._decide()
        return self.decision

    def handle_timer(self, now: float) -> Decision | None:
        """At or after ``deadline`` without the peer's parity: DISCARD."""
        if self.decision is None and now >= self.deadline:
            self.decision = Decision.DISCARD
            self.timed_out = True
        return self.decision

    def _decide(self) -> None:
        if self.decision is None and self._mine is not None and self._peer is not None:
            self.decision = Decision.KEEP if self._mine == self._peer else Decision.DISCARD
