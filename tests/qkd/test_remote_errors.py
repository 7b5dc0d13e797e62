"""A peer that breaks the protocol is the peer's fault: the QKD cores raise the
``RemoteProtocolError`` family (never ``ValueError``/``KeyError``/``AssertionError``), and a
rejected block ends only that block — both ends agree on it and go on to the next one."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from nodes.errors import BlockRejected, MalformedMessage, RemoteProtocolError, UnexpectedMessage
from nodes.qkd import messages as m
from nodes.qkd.auth import Authenticator
from nodes.qkd.auth_channel import AuthenticatedLink
from nodes.qkd.cascade import ParityReply
from nodes.qkd.postprocessing import (
    PostprocessingConfig,
    ReceiverPostprocessing,
    SenderPostprocessing,
)
from nodes.qkd.sifting import BatchRecord, SiftReceiver, SiftSender

QBER = 0.03
BLOCK = 20_000


def records(rng: np.random.Generator, batches: int, n: int = BLOCK):
    """Per batch the two ends' records of an entanglement-based key with ~QBER errors."""
    out, slot = [], 0
    for b in range(batches):
        a = rng.integers(0, 2, n, dtype=np.uint8)
        flips = (rng.random(n) < QBER).astype(np.uint8)
        sample, errors = 2000, int(rng.binomial(2000, QBER))
        slot += n + sample
        common = dict(batch=b, slot_end=slot, detections=np.array([n + sample]),
                      matched=np.array([n + sample]), errors=np.array([errors]),
                      sample_bits=sample, complete=True)
        out.append((BatchRecord(key=a, **common), BatchRecord(key=a ^ flips, **common)))
    return out


def wire(tx: SenderPostprocessing, rx: ReceiverPostprocessing, batches: int, tamper=None,
         seed: int = 3) -> list[RemoteProtocolError]:
    """Run the two cores against each other in memory, as a shell does: a ``BlockRejected``
    is answered with ``reject`` (its ``BlockAbort`` goes to the peer); returns the errors."""
    errors: list[RemoteProtocolError] = []

    def deliver(core, message) -> list:
        try:
            return core.on_message(msgspec.msgpack.decode(m.encoder.encode(message),
                                                          type=m.Message))
        except BlockRejected as exc:
            errors.append(exc)
            return core.reject(exc)

    def exchange(to_sender: list) -> None:
        for _ in range(10_000):
            if not to_sender:
                return
            to_receiver = [out for message in to_sender for out in deliver(tx, message)]
            to_sender = []
            for message in to_receiver:
                message = tamper(message) if tamper else message
                to_sender += deliver(rx, message)
        raise AssertionError("exchange did not settle")

    for rec_tx, rec_rx in records(np.random.default_rng(seed), batches):
        tx.add_record(rec_tx)
        exchange(rx.add_record(rec_rx))
    exchange(rx.finish())
    return errors


def cores() -> tuple[SenderPostprocessing, ReceiverPostprocessing]:
    config = PostprocessingConfig((1.0,), (1.0,), block_bits=BLOCK, min_block_bits=BLOCK,
                                  entangled=True)
    return (SenderPostprocessing(config, np.random.default_rng(1)),
            ReceiverPostprocessing(config, np.random.default_rng(2)))


def test_clean_run_has_no_errors_and_equal_keys() -> None:
    tx, rx = cores()
    assert wire(tx, rx, 3) == []
    assert [b.status for b in rx.blocks] == [b.status for b in tx.blocks] == ["ok"] * 3
    assert all(np.array_equal(a.final_key, b.final_key) for a, b in zip(tx.blocks, rx.blocks))


def test_a_bad_parity_reply_rejects_that_block_only() -> None:
    """Block 1's third Cascade reply claims one parity too many: the receiver rejects block 1
    (``BlockRejected``, not ``ValueError``); both ends mark it ``rejected``, blocks 0 and 2
    still give the same key at both ends."""
    seen = {"n": 0}

    def tamper(message):
        if isinstance(message, ParityReply) and message.block_id == 1:
            seen["n"] += 1
            if seen["n"] == 3:
                return msgspec.structs.replace(message, count=message.count + 1)
        return message

    tx, rx = cores()
    errors = wire(tx, rx, 3, tamper)
    assert len(errors) == 1 and isinstance(errors[0], BlockRejected)
    assert not isinstance(errors[0], ValueError) and errors[0].scope == "block"
    assert [b.status for b in rx.blocks] == [b.status for b in tx.blocks] \
        == ["ok", "rejected", "ok"]
    assert rx.blocks[1].final_key is None and tx.blocks[1].final_key is None
    for a, b in zip(tx.blocks, rx.blocks):
        if a.status == "ok":
            assert np.array_equal(a.final_key, b.final_key)
    assert rx.idle


def test_a_wrong_privacy_amplification_ends_the_session() -> None:
    """PA is the sender's commit (it has finished the block): a bad one cannot be undone
    block-wise, so it is a ``MalformedMessage`` (session scope), not a rejected block."""
    def tamper(message):
        if isinstance(message, m.PrivacyAmplification) and message.block == 0:
            return msgspec.structs.replace(message, out_len=message.out_len + 1)
        return message

    tx, rx = cores()
    with pytest.raises(MalformedMessage) as info:
        wire(tx, rx, 1, tamper)
    assert info.value.scope == "session"


def test_out_of_order_post_processing_messages_are_unexpected() -> None:
    tx, rx = cores()
    with pytest.raises(UnexpectedMessage):  # no block is open
        rx.on_message(ParityReply(block_id=0, round=0, count=0, parities=b""))
    with pytest.raises(UnexpectedMessage):  # batches that were never sifted
        tx.on_message(m.BlockStart(0, 0, 3, 0, 100, 1))
    with pytest.raises(UnexpectedMessage):
        tx.on_message(m.SourceFinished(pulses=3))


def test_sifting_rejects_inconsistent_peers() -> None:
    sender = SiftSender(b"k" * 16, [1.0], 0.1, np.random.default_rng(1))
    with pytest.raises(MalformedMessage):  # 2 slots, 3 bases
        sender.on_sift_request(m.SiftRequest(0, np.arange(2, dtype="<u8").tobytes(),
                                             b"\x00\x01\x00"))
    with pytest.raises(MalformedMessage):  # slots not 8-byte words
        sender.on_sift_request(m.SiftRequest(0, b"\x00" * 7, b"\x00"))
    with pytest.raises(UnexpectedMessage):  # a result for a batch never requested
        sender.on_sample_result(m.SampleResult(batch=9, errors=0, sampled=0))
    receiver = SiftReceiver()
    slots = np.arange(0, 2000, 2, dtype="<u8")
    receiver.add_detections(slots.tobytes(), np.zeros(1000, np.uint8).tobytes(),
                            np.zeros(1000, np.uint8).tobytes(), 2000)
    request = receiver.next_request()
    reply = sender.on_sift_request(request)
    with pytest.raises(UnexpectedMessage):
        sender.on_sift_request(request)  # the same batch twice
    with pytest.raises(UnexpectedMessage):
        receiver.on_sift_reply(msgspec.structs.replace(reply, batch=5))
    bad = [msgspec.structs.replace(reply, match=reply.match[:-1]),
           msgspec.structs.replace(reply, sample_positions=np.array(
               [10**6], "<u4").tobytes(), sample_bits=b"\x00"),
           msgspec.structs.replace(reply, sample_bits=reply.sample_bits + b"\x00")]
    for tampered in bad:
        receiver = SiftReceiver()
        receiver.add_detections(slots.tobytes(), np.zeros(1000, np.uint8).tobytes(),
                                np.zeros(1000, np.uint8).tobytes(), 2000)
        receiver.next_request()
        with pytest.raises(MalformedMessage):
            receiver.on_sift_reply(tampered)
    result, _ = cleanly_sifted(sender)
    with pytest.raises(MalformedMessage):
        sender.on_sample_result(msgspec.structs.replace(result, sampled=result.sampled + 1))


def cleanly_sifted(sender: SiftSender):
    """A fresh batch sifted cleanly between ``sender`` and a new receiver."""
    receiver = SiftReceiver()
    slots = np.arange(5000, 7000, 2, dtype="<u8")
    receiver.add_detections(slots.tobytes(), np.zeros(1000, np.uint8).tobytes(),
                            np.zeros(1000, np.uint8).tobytes(), 7000)
    request = msgspec.structs.replace(receiver.next_request(), batch=1)
    receiver._pending[1] = receiver._pending.pop(0)
    return receiver.on_sift_reply(sender.on_sift_request(request))


def test_an_authentic_frame_that_is_no_envelope_is_malformed() -> None:
    a = AuthenticatedLink(Authenticator("initiator", b"s" * 16, bootstrap_keys=64))
    b = AuthenticatedLink(Authenticator("responder", b"s" * 16, bootstrap_keys=64))
    with pytest.raises(MalformedMessage):
        b.receive(a.auth.seal(b"\xc1 not an envelope"), now=0.0)
