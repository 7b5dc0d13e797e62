"""BBM92 sifting (nodes/qkd/bbm92/sifting.py) without processes: both ends build the same
post-processing records from the two wire messages, and the QKD cores then agree on the key;
the Announcer/Answerer cores say when sifting is over and whose fault a bad message is."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from nodes.errors import MalformedMessage, UnexpectedMessage
from nodes.qkd import messages as m
from nodes.qkd.auth import KEY_BITS_PER_MESSAGE
from nodes.qkd.bbm92 import sifting as bbm92
from nodes.qkd.bbm92.shell import _config
from nodes.qkd.bbm92.spec import BBM92App
from nodes.qkd.postprocessing import (
    ReceiverPostprocessing,
    SenderPostprocessing,
)


def _batch(rng: np.random.Generator, n: int, qber: float, chsh: float, sample: float):
    """Simulated outcomes: a in Z/X, b in Z/X/CHSH settings, key bits flipped with ``qber``;
    10 pairs of every 1000 never reached a (MISSING)."""
    a_bases = rng.integers(0, 2, n).astype(np.uint8)
    a_bases[rng.random(n) < 0.01] = bbm92.MISSING
    settings = rng.choice(4, n, p=[(1 - chsh) / 2, (1 - chsh) / 2, chsh / 2, chsh / 2])
    settings = settings.astype(np.uint8)
    a_bits = rng.integers(0, 2, n).astype(np.uint8)
    b_bits = a_bits ^ (rng.random(n) < qber).astype(np.uint8)
    mask = (settings < 2) & (rng.random(n) < sample)
    return a_bases, a_bits, settings, b_bits, mask


def _exchange(batch: int, before: int, a_bases, a_bits, settings, b_bits, mask):
    """Both messages through the wire codec; returns (a's record, b's record)."""
    pairs = np.arange(before, before + len(settings), dtype=np.uint64)
    wire = bbm92.decoder.decode(m.encoder.encode(
        bbm92.announce(batch, pairs, settings, b_bits, mask, last=False)))
    got_pairs, got_settings, got_mask, b_shown = bbm92.decode_announce(wire)
    assert np.array_equal(got_pairs, pairs) and np.array_equal(got_mask, mask)
    # a's side
    s_a = bbm92.sift(got_settings, got_mask, a_bases)
    b_at_a = bbm92._spread(b_shown, bbm92.b_reveals(got_settings, got_mask))
    answer = bbm92.decoder.decode(m.encoder.encode(bbm92.Answer(
        batch, a_bases.tobytes(), a_bits[bbm92.a_reveals(s_a)].tobytes())))
    rec_a = bbm92.batch_record(batch, before, s_a, a_bits[s_a.sample], b_at_a[s_a.sample],
                               a_bits)
    # b's side
    s_b = bbm92.sift(settings, mask, np.frombuffer(answer.bases, np.uint8))
    a_at_b = bbm92._spread(np.frombuffer(answer.outcomes, np.uint8), bbm92.a_reveals(s_b))
    rec_b = bbm92.batch_record(batch, before, s_b, a_at_b[s_b.sample], b_bits[s_b.sample],
                               b_bits)
    # what b learned of a is exactly a's outcomes on CHSH and sampled pairs
    shown = bbm92.a_reveals(s_b)
    assert np.array_equal(a_at_b[shown], a_bits[shown])
    return rec_a, rec_b


def test_both_ends_build_identical_records_except_the_key() -> None:
    rng = np.random.default_rng(3)
    n, qber = 20_000, 0.03
    a_bases, a_bits, settings, b_bits, mask = _batch(rng, n, qber, 0.1, 0.1)
    rec_a, rec_b = _exchange(0, 0, a_bases, a_bits, settings, b_bits, mask)
    for field in ("batch", "slot_end", "sample_bits", "complete"):
        assert getattr(rec_a, field) == getattr(rec_b, field)
    for field in ("detections", "matched", "errors"):
        assert np.array_equal(getattr(rec_a, field), getattr(rec_b, field))
    sifted = (settings < 2) & (a_bases == settings)
    assert rec_a.matched[0] == sifted.sum() and rec_a.detections[0] == n
    assert rec_a.sample_bits == (sifted & mask).sum()
    assert len(rec_a.key) == len(rec_b.key) == (sifted & ~mask).sum()
    # key errors: binomial around qber (4 sigma)
    k = len(rec_a.key)
    assert abs(np.mean(rec_a.key != rec_b.key) - qber) < 4 * math.sqrt(qber * (1 - qber) / k)


def test_records_feed_the_cores_to_identical_keys() -> None:
    """... and each block's auth refill is exactly the one-time keys of the messages it took:
    two per sifting batch (Announce, Answer), every post-processing message counted here."""
    rng = np.random.default_rng(5)
    config = _config(BBM92App("a", "b", block_bits=30_000, min_block_bits=10_000))
    tx = SenderPostprocessing(config, np.random.default_rng(1))
    rx = ReceiverPostprocessing(config, np.random.default_rng(2))
    out, before, messages = [], 0, 0
    for batch in range(4):
        rec_a, rec_b = _exchange(batch, before, *_batch(rng, 40_000, 0.02, 0.1, 0.1))
        before = rec_a.slot_end
        tx.add_record(rec_a)
        out += rx.add_record(rec_b)
        if batch == 3:
            out += rx.finish()
        for _ in range(10_000):  # bounded: Cascade takes ~100 rounds per block
            if not out:
                break
            replies = [r for msg in out for r in tx.on_message(
                bbm92.decoder.decode(m.encoder.encode(msg)))]
            messages += len(out) + len(replies)
            out = [r for msg in replies for r in rx.on_message(
                bbm92.decoder.decode(m.encoder.encode(msg)))]
    assert rx.idle
    ok_a = [b for b in tx.blocks if b.status == "ok"]
    ok_b = [b for b in rx.blocks if b.status == "ok"]
    assert len(ok_b) == len(ok_a) == len(rx.blocks) >= 2
    for ba, bb in zip(ok_a, ok_b, strict=True):
        assert np.array_equal(ba.final_key, bb.final_key) and ba.out_len == bb.out_len > 0
    batches = sum(len(b.records) for b in ok_b)
    assert sum(b.auth_bits for b in ok_b) == KEY_BITS_PER_MESSAGE * (2 * batches + messages)


def test_message_tags_do_not_clash_with_the_qkd_messages() -> None:
    ours = {bbm92.Announce.__struct_config__.tag, bbm92.Answer.__struct_config__.tag,
            bbm92.Done.__struct_config__.tag}
    theirs = {t.__struct_config__.tag for t in m.Message.__args__}
    assert not ours & theirs
    assert isinstance(bbm92.decoder.decode(m.encoder.encode(bbm92.Done(3))), bbm92.Done)


def test_announcer_and_answerer_cores_end_sifting_and_blame_the_peer() -> None:
    rng = np.random.default_rng(9)
    announcer, answerer = bbm92.Announcer(30, 0.2, rng), bbm92.Answerer()
    b_measured = {k: (int(rng.integers(0, 4)), int(rng.integers(0, 2))) for k in range(20)}
    a_measured = {k: (int(rng.integers(0, 2)), int(rng.integers(0, 2))) for k in range(20)}
    first = announcer.announce(b_measured, past_deadline=False)  # 20 of 30: not the last
    assert not first.last and not announcer.sent_last and b_measured == {}
    answer, record = answerer.answer(first, a_measured)
    assert a_measured == {} and answerer.answered == 20
    done = announcer.on_answer(bbm92.decoder.decode(m.encoder.encode(answer)))
    assert len(done.sifted.settings) == 20 and not announcer.answered_last
    with pytest.raises(UnexpectedMessage):  # answered already
        announcer.on_answer(answer)
    last = announcer.announce({}, past_deadline=True)
    assert last.last and announcer.sent_last and not announcer.answered_last
    bad = msgspec.structs.replace(answerer.answer(last, {})[0], bases=b"\x00")
    with pytest.raises(MalformedMessage):  # one basis for zero pairs
        announcer.on_answer(bad)
    with pytest.raises(UnexpectedMessage):  # a's side: nothing after the last announce
        answerer.answer(last, {})
    with pytest.raises(MalformedMessage):  # settings beyond 0..3
        bbm92.decode_announce(msgspec.structs.replace(first, settings=b"\x07" * 20))
    with pytest.raises(MalformedMessage):  # pair ids not 8-byte words
        bbm92.decode_announce(msgspec.structs.replace(first, pairs=first.pairs[:-1]))
