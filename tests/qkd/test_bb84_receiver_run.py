"""The BB84 receiver's run core wired to the sender's cores in memory: sifting cadence,
the end of sifting (detector done + source finished + nothing outstanding, in any order),
the last partial block, equal keys at both ends; a second SourceFinished is the peer's fault."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from emulator.physics.channels import transmittance
from emulator.physics.detection import detect_frame
from nodes.errors import UnexpectedMessage
from nodes.qkd import messages as m
from nodes.qkd.bb84.receiver import ReceiverRun
from nodes.qkd.postprocessing import (
    PostprocessingConfig,
    ReceiverPostprocessing,
    SenderPostprocessing,
)
from nodes.qkd.sifting import SiftReceiver, SiftSender

MUS, PROBS = (0.5, 0.1, 0.0), (0.8, 0.1, 0.1)
FRAME = 5_000_000


def frames(key: bytes, pulses: int, rng: np.random.Generator):
    eta = transmittance(10, 0.2) * 0.1
    for start in range(0, pulses, FRAME):
        end = min(pulses, start + FRAME)
        c = detect_frame(rng, key, start, end, MUS, PROBS, eta, 1e-6, 0.015)
        yield SimpleNamespace(slot=c.slot.astype("<u8").tobytes(), basis=c.basis.tobytes(),
                              outcome=c.outcome.tobytes(), frame_end=end, last=end == pulses)


def sender_answers(sift_tx: SiftSender, tx: SenderPostprocessing | None, messages: list):
    out = []
    for message in messages:
        if isinstance(message, m.SiftRequest):
            out.append(sift_tx.on_sift_request(message))
        elif isinstance(message, m.SampleResult):
            if tx is not None:
                tx.add_record(sift_tx.on_sample_result(message))
        else:
            out += tx.on_message(message)
    return out


@pytest.mark.parametrize("postprocessing", [False, True])
def test_run_ends_only_when_everything_is_sifted_and_processed(postprocessing: bool) -> None:
    rng = np.random.default_rng(1)
    key = rng.bytes(16)
    config = PostprocessingConfig(MUS, PROBS, block_bits=50_000, min_block_bits=10_000)
    sift_tx = SiftSender(key, list(PROBS), 0.1, np.random.default_rng(2))
    tx = SenderPostprocessing(config, np.random.default_rng(3)) if postprocessing else None
    rx = ReceiverPostprocessing(config, np.random.default_rng(4)) if postprocessing else None
    run = ReceiverRun(SiftReceiver(len(MUS)), rx, sift_interval_s=0.5, now=0.0)
    assert run.deadline() == 0.5 and run.on_timer(0.4) == []
    in_flight: list = []  # receiver -> sender, delivered late on purpose
    now = 0.0
    for batch in frames(key, 60_000_000, rng):
        now += 0.25
        in_flight += run.on_detections(batch, now, wall=now)
        in_flight += run.on_timer(now)
        assert not run.done
    assert run.detections_done and run.deadline() is None
    assert not run.done  # replies outstanding, and the source has not said it finished
    pending = []
    for message in sender_answers(sift_tx, tx, in_flight):
        pending += run.on_message(message)
        assert not run.done  # no SourceFinished yet
    pending += run.on_message(m.SourceFinished(pulses=60_000_000))
    for _ in range(10_000):  # post-processing ping-pong until quiet
        if not pending:
            break
        pending = [o for reply in sender_answers(sift_tx, tx, pending)
                   for o in run.on_message(reply)]
    assert run.sifting_finished and run.done
    assert run.t_first_detection == 0.25
    if postprocessing:
        ok = [b for b in rx.blocks if b.status == "ok"]
        assert len(ok) >= 2 and [b.status for b in tx.blocks] == [b.status for b in rx.blocks]
        assert all(np.array_equal(a.final_key, b.final_key)
                   for a, b in zip(tx.blocks, rx.blocks) if a.status == "ok")
    with pytest.raises(UnexpectedMessage):
        run.on_message(m.SourceFinished(pulses=1))


def test_a_full_buffer_is_sifted_before_the_timer() -> None:
    rng = np.random.default_rng(5)
    key = rng.bytes(16)
    run = ReceiverRun(SiftReceiver(len(MUS)), None, sift_interval_s=100.0, now=0.0)
    run_max = 1_000_000
    sent = []
    for batch in frames(key, 20_000_000, rng):
        sent += run.on_detections(SimpleNamespace(**{**vars(batch), "last": False}), 1.0, 1.0)
    assert run.sift.buffered < run_max and sent == []  # ~10^5 clicks: waits for the timer
    assert [type(x) for x in run.on_timer(100.0)] == [m.SiftRequest]
    assert run.deadline() == 200.0
