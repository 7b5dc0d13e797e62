"""Messages between the two ends of a QKD app: the one place this wire format is defined.

They travel the app's classical channel (``nodes.transport``) as MessagePack maps tagged by
``type``. Bulk per-slot data are packed numpy arrays in ``bytes`` fields (little-endian
uint64 slots, uint8 bases and intensity indices, packed bits), so a batch of 10^5 detections
costs one frame, not 10^5 objects. Documented in docs/protocol.md.
"""

from __future__ import annotations

import msgspec

from nodes.qkd.cascade import CascadeDone, ParityQuery, ParityReply
from nodes.qkd.verification import VerifyResult, VerifyTag


class SiftRequest(msgspec.Struct, tag="sift_request"):
    """Receiver -> sender: the slots that clicked in a batch and the basis each was seen in."""

    batch: int
    slots: bytes  # uint64 LE
    bases: bytes  # uint8, 0 = Z, 1 = X
    slot_end: int = 0  # every slot below this has been reported (clicks or not)


class SiftReply(msgspec.Struct, tag="sift_reply"):
    """Sender -> receiver: which bases matched, the announced intensity of every clicked slot,
    the sender's bits at the sample positions (indices into the batch's key bits) and at every
    matched slot that is revealed rather than kept."""

    batch: int
    match: bytes  # numpy.packbits of (sender basis == receiver basis), len = slots
    intensity: bytes  # uint8 intensity index per requested slot
    sample_positions: bytes  # uint32 LE
    sample_bits: bytes  # uint8
    revealed_bits: bytes = b""  # sender's bits at every matched slot kept out of the key
    # (decoy and vacuum slots; in finite-key mode every X-basis slot), in slot order


class SampleResult(msgspec.Struct, tag="sample_result"):
    """Receiver -> sender: errors it found in the revealed sample of a batch."""

    batch: int
    errors: int
    sampled: int
    revealed_errors: dict[int, int] = {}  # intensity index -> errors among revealed slots


class SourceFinished(msgspec.Struct, tag="source_finished"):
    """Sender -> receiver: the source has stopped after ``pulses`` slots."""

    pulses: int


class ReceiverFinished(msgspec.Struct, tag="receiver_finished"):
    """Receiver -> sender: every detection up to the end of the source has been sifted."""

    batches: int


class BlockStart(msgspec.Struct, tag="block_start"):
    """Receiver -> sender: batches [first_batch, last_batch] form post-processing block ``block``
    covering slots [slot_start, slot_end); Cascade shuffles use ``cascade_seed``."""

    block: int
    first_batch: int
    last_batch: int
    slot_start: int
    slot_end: int
    cascade_seed: int


class BlockAbort(msgspec.Struct, tag="block_abort"):
    """Either end: block ``block`` (batches [first_batch, last_batch]) yields no key."""

    block: int
    first_batch: int
    last_batch: int
    reason: str


class PrivacyAmplification(msgspec.Struct, tag="privacy_amplification"):
    """Sender -> receiver: Toeplitz seed (packed bits, n + out_len - 1 of them) and length."""

    block: int
    out_len: int
    seed: bytes


Message = (SiftRequest | SiftReply | SampleResult | SourceFinished | ReceiverFinished
           | BlockStart | BlockAbort | PrivacyAmplification | ParityQuery | ParityReply
           | CascadeDone | VerifyTag | VerifyResult)

encoder = msgspec.msgpack.Encoder()
decoder = msgspec.msgpack.Decoder(Message)
