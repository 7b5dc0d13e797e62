"""The BB84 receiver's run as a sans-I/O core: when to sift, when sifting is over, when done.

Detections come in (``on_detections``), the sift timer fires (``on_timer`` at ``deadline``),
the sender's messages come in (``on_message``); each returns the messages to send. Sifting
is over once the detector reported its last record, the source said how many pulses it sent
and no batch is buffered or awaiting its reply; then post-processing gets a last partial block
and the run is ``done`` once post-processing is idle. Peer errors raise the
``RemoteProtocolError`` family; a ``BlockRejected`` is answered with ``reject``.
"""

from __future__ import annotations

from nodes.errors import BlockRejected, UnexpectedMessage
from nodes.qkd import messages as m
from nodes.qkd.postprocessing import ReceiverPostprocessing
from nodes.qkd.sifting import SiftReceiver

MAX_BATCH_DETECTIONS = 1_000_000  # a sift request of ~9 MB; sent early when reached


class ReceiverRun:
    """Sifting cadence and end-of-run state of one BB84 receiver (emulated times)."""

    def __init__(self, sift: SiftReceiver, post: ReceiverPostprocessing | None,
                 sift_interval_s: float, now: float) -> None:
        self.sift, self.post = sift, post
        self.interval = sift_interval_s
        self.next_sift = now + sift_interval_s
        self.detections_done = False
        self.pulses: int | None = None  # from the sender's SourceFinished
        self.sifting_finished = False
        self.t_first_detection: float | None = None
        self.wall_first_detection: float | None = None
        self.rejected: list[BlockRejected] = []

    @property
    def done(self) -> bool:
        return self.sifting_finished and (self.post is None or self.post.idle)

    def deadline(self) -> float | None:
        """When the sift timer should fire next (None once the detector is done)."""
        return None if self.detections_done else self.next_sift

    def on_detections(self, batch, now: float, wall: float) -> list:
        """A detection record batch from the daemon (``batch.last`` ends the stream)."""
        if self.t_first_detection is None and batch.slot:
            self.t_first_detection, self.wall_first_detection = now, wall
        self.sift.add_detections(batch.slot, batch.basis, batch.outcome, batch.frame_end)
        out = []
        if batch.last:
            self.detections_done = True
            out = self._request(now)
        elif self.sift.buffered >= MAX_BATCH_DETECTIONS:
            out = self._request(now)
        return out + self._check_done()

    def on_timer(self, now: float) -> list:
        if self.detections_done or now < self.next_sift:
            return []
        return self._request(now)

    def on_message(self, message) -> list:
        """A message from the sender; raises ``BlockRejected`` (then ``reject``) or another
        ``RemoteProtocolError`` for what the sender got wrong."""
        out: list = []
        if isinstance(message, m.SiftReply):
            result, record = self.sift.on_sift_reply(message)
            out = [result, *(self.post.add_record(record) if self.post is not None else ())]
        elif isinstance(message, m.SourceFinished):
            if self.pulses is not None:
                raise UnexpectedMessage("source_finished twice")
            self.pulses = message.pulses
        elif self.post is not None:
            out = self.post.on_message(message)
        else:
            raise UnexpectedMessage(f"{type(message).__name__} without post-processing")
        return out + self._check_done()

    def reject(self, error: BlockRejected) -> list:
        """End the open block because of the sender's ``error``; what to send."""
        if self.post is None:
            raise UnexpectedMessage(str(error)) from error
        self.rejected.append(error)
        return self.post.reject(error) + self._check_done()

    def _request(self, now: float) -> list:
        self.next_sift = now + self.interval
        request = self.sift.next_request()
        return [request] if request is not None else []

    def _check_done(self) -> list:
        if (self.sifting_finished or not self.detections_done or self.pulses is None
                or self.sift.buffered or self.sift.outstanding):
            return []
        self.sifting_finished = True
        return self.post.finish() if self.post is not None else []
