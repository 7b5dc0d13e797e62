"""A classical link as an Ethernet wire between two namespaces, shaped frame by frame.

Run as ``python -m emulator.netns.shaper --config CONFIG.json --ready-file READY.json``
(config: ``WireConfig``). For each end it enters that node's namespace, creates a
non-persistent TAP there (``kernel.open_tap``: the device lives as long as this process's fd)
and gives it the end's MTU and addresses. Every frame read from one TAP goes through the
direction's ``relay_core.DirectionShaper`` (loss on every frame: TCP, UDP, ICMP, ARP alike;
FIFO serialization at the rate; delay and jitter, which may reorder frames as on netem) and is
written to the other TAP at its delivery time. A frame is dropped when the link is cut, when
the loss draw says so, or when the serialization backlog exceeds ``BACKLOG_S`` (a tail-drop
queue: TCP then finds the rate by loss, as on a router).

Counters, topics and control are the relay's (``emulator.relay_telemetry``, shared):
``relay/<link>/metrics`` every second, ``relay/<link>/traffic`` (the daemon's Raman input),
``relay/<link>/fault`` for each fault applied, ``relay/<link>/result`` on stop (result.json
``links[].classical``); ``control/link/<link>`` cut, restore, corrupt (flip a bit in the next frame of at
least ``CORRUPT_MIN_BYTES``: its checksum fails at the receiver) and degrade (extra loss on
every frame; zero clears it). ``Wire.hooks`` see every frame
(``FrameHook``): for capture.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import trio

from emulator import relay_telemetry, telemetry
from emulator.child_config import Direction, MqttAddress, child_arguments, read_config, write_ready
from emulator.clock import EmulatedClock
from emulator.netns import wire_capture
from emulator.netns.kernel import TimerFd, entered, ip_batch, open_tap
from emulator.relay_core import (
    Counters,
    DatagramQueue,
    DirectionShaper,
    TimerLead,
    link_rng,
)
from emulator.supervise import exit_quietly_on_sigterm, watch_parent
from emulator.telemetry import LinkControl, RelayReport

log = logging.getLogger("qnet.wire")

SIDES = ("a", "b")
MAX_FRAME = 65536
READ_BATCH = 64  # frames read per wake-up before other tasks get a turn
BACKLOG_S = 0.05  # emulated seconds of serialization queued before frames are tail-dropped
CORRUPT_MIN_BYTES = 1000
CALIBRATION_SLEEPS = 20
LATE_S = 0.001  # a delivery wake-up this late is counted (late_wakeups)
WIRE_NICE = -10  # a loaded machine (or a run started with `nice`) must not delay frames
DUE_SLACK_S = 20e-6  # frames due this soon go out with the ones due now (one wake-up)
FINAL_PUBLISH_TIMEOUT_S = 1.0

# hook(direction "ab" | "ba", wall time.time(), frame, delivered): called once per frame, when
# it is written to the far TAP (True) or when it is dropped (False). Must not block.
FrameHook = Callable[[str, float, bytes, bool], None]


class WireEnd(msgspec.Struct):
    """One end: the node's namespace (``/proc/<pid>/ns/net``), interface name and addresses."""

    node: str
    netns: str
    ifname: str
    addr4: str  # "10.0.0.1/24"
    addr6: str
    mtu: int = 1500


class WireConfig(msgspec.Struct):
    """Wire of link ``name``: ``a_to_b`` shapes frames a sends towards b."""

    run_id: str
    t0: float
    time_scale: float
    seed: int
    name: str
    a: WireEnd
    b: WireEnd
    a_to_b: Direction
    b_to_a: Direction
    mqtt: MqttAddress | None = None
    capture: str | None = None  # pcapng path (``--capture``), written through a frame hook
    capture_max_bytes: int = 100_000_000  # ``--capture-max-mb``: the file stops growing there
    traffic_interval_s: float | None = None  # relay/<link>/traffic period (Raman links only)


def _key(sender: str) -> str:
    return "ab" if sender == "a" else "ba"


def _other(side: str) -> str:
    return "b" if side == "a" else "a"


class Wire:
    """The two TAPs of one link and the frames between them (``run`` serves until cancelled)."""

    def __init__(self, config: WireConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.hooks: list[FrameHook] = []
        self.stop_requested = trio.Event()
        self.clock = EmulatedClock(config.t0, config.time_scale)
        self.capture = None  # the relay's capture slot; a wire records through its hooks
        self.is_cut = False
        self.extra_loss = 0.0
        self.corrupt_pending = 0
        self.shapers = {
            key: DirectionShaper(direction, config.time_scale,
                                 jitter_rng=link_rng(config.seed, config.name, key, "jitter"),
                                 loss_rng=link_rng(config.seed, config.name, key, "loss"))
            for key, direction in (("ab", config.a_to_b), ("ba", config.b_to_a))}
        self._degrade_rng = {key: link_rng(config.seed, config.name, key, "degrade")
                             for key in ("ab", "ba")}
        self.backlog = BACKLOG_S / config.time_scale
        self.queues = {key: DatagramQueue() for key in ("ab", "ba")}
        self._rearm: dict[str, trio.CancelScope | None] = dict.fromkeys(("ab", "ba"))
        self.timers = {key: TimerFd() for key in ("ab", "ba")}
        self.timer = TimerLead()
        self.fds: dict[str, int] = {}

    # -- control ------------------------------------------------------------------------
    def apply(self, message: LinkControl) -> str | None:
        """Apply a ``control/link/<name>`` fault to this wire; its effect, or None when it
        is the quantum plane's (the relay's interface: ``emulator.relay_telemetry.control``)."""
        if message.plane == "quantum":
            return None
        log.info("link %s: %s (plane %s)", self.config.name, message.action, message.plane)
        if message.action == "cut":
            self.is_cut = True
            return "classical cut (every frame dropped)"
        if message.action == "restore":
            self.is_cut = False
            return "classical restored"
        if message.action == "corrupt":
            self.corrupt_pending += 1
            return f"next frame of at least {CORRUPT_MIN_BYTES} bytes corrupted"
        self.extra_loss = min(1.0, max(0.0, message.loss))
        return f"classical extra frame loss {message.loss:g}"

    def now(self) -> float:
        """Emulated time (for fault reports)."""
        return self.clock.now()

    def request_stop(self) -> None:
        self.stop_requested.set()

    def report(self) -> RelayReport:
        c = self.counters
        return RelayReport(self.config.name, self.config.a.node, self.config.b.node,
                           c.bytes_ab, c.bytes_ba, c.messages, c.dropped, counters=dict(c.faults))

    # -- frames -------------------------------------------------------------------------
    def open(self) -> None:
        """Create and configure the TAP of each end inside that end's namespace."""
        for side in SIDES:
            end: WireEnd = getattr(self.config, side)
            with entered(end.netns):
                self.fds[side] = open_tap(end.ifname)
                ip_batch([f"link set dev {end.ifname} mtu {end.mtu}",
                          f"address add {end.addr4} dev {end.ifname}",
                          f"address add {end.addr6} dev {end.ifname} nodad",
                          f"link set dev {end.ifname} up"])

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        for timer in self.timers.values():
            timer.close()

    def _drop(self, key: str, kind: str, frame: bytes) -> None:
        self.counters.dropped += 1
        self.counters.fault(kind)
        for hook in self.hooks:
            hook(key, time.time(), frame, False)

    def _lost(self, key: str) -> bool:
        if self.shapers[key].lost():
            return True
        return self.extra_loss > 0 and bool(self._degrade_rng[key].random() < self.extra_loss)

    def arrive(self, key: str, now: float, frame: bytes) -> None:
        """A frame left the sender's TAP at ``now``: drop it, or queue it for delivery."""
        shaper = self.shapers[key]
        if self.is_cut:
            return self._drop(key, "cut_frames", frame)
        if self._lost(key):
            return self._drop(key, "lost_frames", frame)
        if shaper.link_free - now > self.backlog:
            return self._drop(key, "queue_drops", frame)
        if self.corrupt_pending and len(frame) >= CORRUPT_MIN_BYTES:
            self.corrupt_pending -= 1
            flipped = bytearray(frame)
            flipped[len(flipped) // 2] ^= 0x10
            frame = bytes(flipped)
            self.counters.fault("corrupted")
        if self.queues[key].push(shaper.transmit(now, len(frame)), frame):
            scope = self._rearm[key]
            if scope is not None:  # the sender waits for a later deadline: wait for this one
                scope.cancel()

    def _deliver(self, key: str, frames: list[bytes]) -> None:
        fd = self.fds["b" if key == "ab" else "a"]
        for frame in frames:
            if self.is_cut:
                self._drop(key, "cut_frames", frame)
                continue
            try:
                os.write(fd, frame)
            except OSError:  # the far interface is down or its queue is full
                self._drop(key, "write_errors", frame)
                continue
            self.counters.add(key, len(frame))
            for hook in self.hooks:
                hook(key, time.time(), frame, True)

    async def _receive(self, sender: str) -> None:
        fd, key = self.fds[sender], _key(sender)
        while True:
            await trio.lowlevel.wait_readable(fd)
            now = trio.current_time()
            for _ in range(READ_BATCH):
                try:
                    frame = os.read(fd, MAX_FRAME)
                except BlockingIOError:
                    break
                self.arrive(key, now, frame)
            await trio.lowlevel.checkpoint()

    async def _send(self, key: str) -> None:
        """Write queued frames of ``key`` when due: a timerfd at the earliest deadline minus
        the learned wake-up latency (``TimerLead``), re-armed (its wait cancelled) when an
        earlier frame arrives."""
        queue, timer = self.queues[key], self.timers[key]
        while True:
            deadline = queue.next_deadline()
            wait = deadline - trio.current_time() - self.timer.lead
            if wait > DUE_SLACK_S:
                with trio.CancelScope() as scope:
                    self._rearm[key] = scope
                    if deadline == float("inf"):
                        await trio.sleep_forever()
                    timer.arm_after(wait)
                    await trio.lowlevel.wait_readable(timer.fd)
                self._rearm[key] = None
                timer.clear()
                if not scope.cancelled_caught:
                    lateness = trio.current_time() - deadline
                    self.timer.observe(lateness)
                    if lateness > LATE_S:  # the machine, not the link, delayed these frames
                        self.counters.fault("late_wakeups")
            due = trio.current_time() + self.timer.lead + DUE_SLACK_S
            self._deliver(key, queue.pop_due(due))
            await trio.lowlevel.checkpoint()

    async def calibrate_timer(self) -> None:
        """Start the timer lead at the quantile of the timerfd's wake-up latency over
        ``CALIBRATION_SLEEPS`` sleeps of 1 ms (it then tracks the lateness of deliveries)."""
        timer, late = self.timers["ab"], []
        for _ in range(CALIBRATION_SLEEPS):
            target = trio.current_time() + 0.001
            timer.arm_after(0.001)
            await trio.lowlevel.wait_readable(timer.fd)
            timer.clear()
            late.append(trio.current_time() - target)
        self.timer.start_from(late)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for shaper in self.shapers.values():  # a satellite pass's delay schedule starts at 0
            shaper.origin = self.clock.deadline(0.0)
        await self.calibrate_timer()
        async with trio.open_nursery() as nursery:
            for side in SIDES:
                nursery.start_soon(self._receive, side)
                nursery.start_soon(self._send, _key(side))
            task_status.started()


def _capture_hook(wire: Wire, path: Path) -> contextlib.AbstractContextManager:
    """``--capture``: every frame into the pcapng ``path`` (emulator/netns/wire_capture.py)."""
    config = wire.config
    return wire_capture.recording(wire.hooks, path, config.name, config.a.node, config.b.node,
                                  config.capture_max_bytes)


async def serve(config: WireConfig, ready_file: Path | None = None) -> Wire:
    """Open the TAPs, report ready, carry frames until stopped (MQTT stop, SIGTERM/SIGINT or
    the orchestrator's death); publish the final counters; close the TAPs."""
    wire = Wire(config)
    wire.open()
    try:
        async with contextlib.AsyncExitStack() as stack:
            if config.capture is not None:
                stack.enter_context(_capture_hook(wire, Path(config.capture)))
            mqtt = None
            if config.mqtt is not None:
                mqtt = await stack.enter_async_context(telemetry.connect(
                    config.mqtt, f"qnet-{config.run_id}-relay-{config.name}"))
            signals = stack.enter_context(trio.open_signal_receiver(signal.SIGTERM,
                                                                    signal.SIGINT))
            async with trio.open_nursery() as nursery:
                await nursery.start(wire.run)
                if mqtt is not None:  # the relay's control, metrics and traffic topics
                    await nursery.start(relay_telemetry.control, wire, mqtt)
                    nursery.start_soon(relay_telemetry.publish_metrics, wire, mqtt)
                    nursery.start_soon(relay_telemetry.publish_traffic, wire, mqtt)

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        wire.request_stop()
                        return

                async def stop_when_orphaned() -> None:
                    await watch_parent()
                    wire.request_stop()

                nursery.start_soon(stop_on_signal)
                nursery.start_soon(stop_when_orphaned)
                if ready_file is not None:
                    write_ready(ready_file, interfaces={"a": config.a.ifname,
                                                        "b": config.b.ifname})
                await wire.stop_requested.wait()
                if mqtt is not None:
                    with trio.move_on_after(FINAL_PUBLISH_TIMEOUT_S):
                        await mqtt.publish(telemetry.relay_result(config.run_id, config.name),
                                           telemetry.encode(wire.report()), qos=1, retain=True)
                nursery.cancel_scope.cancel()
    finally:
        wire.close()
    log.info("link %s: final %s", config.name, msgspec.json.encode(wire.report()).decode())
    return wire


def main() -> None:
    exit_quietly_on_sigterm()
    args = child_arguments("qnet wire shaper")
    with contextlib.suppress(OSError):  # the wire's timing is the link's: ahead of the load
        os.setpriority(os.PRIO_PROCESS, 0, WIRE_NICE)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    trio.run(serve, read_config(args.config, WireConfig), args.ready_file)


if __name__ == "__main__":
    main()
