"""Messages between the two ends of a QKD app: the one place this wire format is defined.

They travel the app's classical channel (``nodes.transport``) as MessagePack maps tagged by
``type``. Bulk per-slot data are packed numpy arrays in ``bytes`` fields (little-endian
uint64 slots, uint8 bases and intensity indices, packed bits), so a batch of 10^5 detections
costs one frame, not 10^5 objects. Documented in docs/protocol.md.
"""

from __future__ import annotations

import msgspec


class SiftRequest(msgspec.Struct, tag="sift_request"):
    """Receiver -> sender: the slots that clicked in a batch and the basis each was seen in."""

    batch: int
    slots: bytes  # uint64 LE
    bases: bytes  # uint8, 0 = Z, 1 = X


class SiftReply(msgspec.Struct, tag="sift_reply"):
    """Sender -> receiver: which bases matched, the announced intensity of every clicked slot,
    and the sender's bits at the sample positions (indices into the batch's sifted signal bits)."""

    batch: int
    match: bytes  # numpy.packbits of (sender basis == receiver basis), len = slots
    intensity: bytes  # uint8 intensity index per requested slot
    sample_positions: bytes  # uint32 LE
    sample_bits: bytes  # uint8


class SampleResult(msgspec.Struct, tag="sample_result"):
    """Receiver -> sender: errors it found in the revealed sample of a batch."""

    batch: int
    errors: int
    sampled: int


class SourceFinished(msgspec.Struct, tag="source_finished"):
    """Sender -> receiver: the source has stopped after ``pulses`` slots."""

    pulses: int


class ReceiverFinished(msgspec.Struct, tag="receiver_finished"):
    """Receiver -> sender: every detection up to the end of the source has been sifted."""

    batches: int


Message = SiftRequest | SiftReply | SampleResult | SourceFinished | ReceiverFinished

encoder = msgspec.msgpack.Encoder()
decoder = msgspec.msgpack.Decoder(Message)
