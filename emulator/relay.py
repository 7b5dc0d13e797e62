"""Link relay: forwards real TCP and UDP between nodes ``a`` and ``b`` with delay, jitter, loss,
rate limit and cut/restore, so node software sees the emulated classical link (DESIGN §2).

Run as ``python -m emulator.relay --config CONFIG.json --ready-file READY.json`` (config:
``emulator.child_config.RelayConfig``), or in-process with ``await nursery.start(serve, config)``.

Addressing. Each node has a listening endpoint for this link (``config.targets[x]``). The relay binds,
on ``config.host`` with kernel-chosen ports, a TCP listener and a UDP socket *for a* and the
same *for b*, and reports them in its ready file as
``{"listen": {"a": {"tcp": P, "udp": P}, "b": {...}}}``. Node ``x`` reaches its peer by
talking to the endpoint *for x*:

* TCP: a connection accepted on the listener for ``a`` is joined to a new connection to
  ``targets["b"].tcp``; bytes a->b are shaped by ``a_to_b``, bytes b->a by ``b_to_a``.
  Closing either side closes both (half-close is not emulated).
* UDP: a datagram received on the socket for ``a`` is sent to ``targets["b"].udp`` *from the
  socket for b*. So ``b`` sees it coming from its own way back to ``a``: a reply sent to the
  datagram's source address lands on the socket for ``b`` and is forwarded to
  ``targets["a"].udp`` from the socket for ``a``. Replies always go to the peer's listening
  endpoint, not to an ephemeral source port. A datagram on the socket for ``a`` that does not
  come from ``targets["a"]`` is a stranger's: dropped and counted (``foreign_datagrams``).

Strangers: at most ``relay_tcp.MAX_TCP_CONNECTIONS`` joined connections per side, silent or
idle ones closed, a reset or garbage ends only its connection; every refusal counted in
``RelayReport.counters`` and logged once per kind.

Modules: this one holds the link's state (cut, faults, timer, counters) and the sockets'
lifetime; ``emulator.relay_tcp`` joins TCP connections, ``emulator.relay_udp`` forwards UDP.

Timing follows ``emulator.relay_core`` (FIFO serialization, then delay and jitter; TCP keeps
byte order, UDP may reorder; UDP loss drawn from a generator seeded by run seed and link
name). Delays are emulated seconds, stretched by ``1/time_scale`` on the wall clock. Deadlines
are absolute (``trio.sleep_until``), asked for ``TimerLead.lead`` early to cancel trio's
oversleep, measured at start-up and tracked afterwards.

Cut/restore: ``cut()`` stops delivery in both directions. TCP bytes stay buffered (then the
relay stops reading, so the sender's socket fills: a stalled fibre under TCP retransmission)
and are delivered in order after ``restore()``; UDP datagrams are dropped and counted.
``degrade`` adds a datagram loss probability (both directions, its own generator); a
``LinkControl`` for the quantum plane only is the daemon's, not the relay's.

Control (when ``config.mqtt`` is set; ``emulator.relay_telemetry``): ``control/link/<name>``
faults, ``relay/<name>/metrics`` each second, ``relay/<name>/traffic`` (bytes per direction,
the daemon's Raman input); ``control/stop`` publishes the final ``RelayReport`` to
``relay/<name>/result`` (qos 1, retained) and ends the relay. SIGTERM/SIGINT: final counters
(at most 1 s spent on publishing), then exit 0.

Capture (``config.capture``): what the relay delivers, as pcapng (``emulator.capture``)
between synthetic hosts 10.0.0.1 (``a``) and 10.0.0.2 (``b``) on the nodes' real ports: UDP
datagrams as UDP, TCP connections with handshake, segments and FIN. Closed (flushed) when the
relay stops, SIGTERM included.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
from pathlib import Path

import msgspec
import trio

from emulator import relay_telemetry, telemetry
from emulator.capture import Host, PcapngWriter
from emulator.child_config import (
    RelayConfig,
    child_arguments,
    read_config,
    write_ready,
)
from emulator.clock import EmulatedClock
from emulator.relay_core import (
    Counters,
    DirectionShaper,
    TimerLead,
    link_rng,
)
from emulator.relay_tcp import TcpJoiner
from emulator.relay_udp import UdpForwarder
from emulator.supervise import exit_quietly_on_sigterm, watch_parent
from emulator.telemetry import LinkControl, RelayReport

log = logging.getLogger("qnet.relay")

SIDES = ("a", "b")
CALIBRATION_SLEEPS = 20
FINAL_PUBLISH_TIMEOUT_S = 1.0
CORRUPT_MIN_BYTES = 16384


class Relay:
    """One classical link's relay: sockets, shapers, counters and the cut switch.

    ``run`` binds and serves until cancelled; ``cut``/``restore`` may be called from any task
    of the same trio run; ``counters`` are live.
    """

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.timer = TimerLead()
        self.listen: dict[str, dict[str, int]] = {}
        self.stop_requested = trio.Event()
        self._up = trio.Event()
        self._up.set()
        self.shapers = {
            key: DirectionShaper(
                direction,
                config.time_scale,
                jitter_rng=link_rng(config.seed, config.name, key, "jitter"),
                loss_rng=link_rng(config.seed, config.name, key, "loss"),
            )
            for key, direction in (("ab", config.a_to_b), ("ba", config.b_to_a))
        }
        self._corrupt_pending = 0
        self.corrupted = 0
        self.clock = EmulatedClock(config.t0, config.time_scale)
        self.extra_loss = 0.0  # a degrade fault's datagram loss probability
        self._degrade_rng = link_rng(config.seed, config.name, "both", "degrade")
        self.capture: PcapngWriter | None = None
        self.hosts = {"a": Host.numbered(1), "b": Host.numbered(2)}
        self.tcp = TcpJoiner(self)
        self.udp = UdpForwarder(self)

    def now(self) -> float:
        """Emulated time (for fault reports)."""
        return self.clock.now()

    # -- cut / restore -------------------------------------------------------------------
    @property
    def is_cut(self) -> bool:
        return not self._up.is_set()

    def cut(self) -> None:
        """Stop delivering in both directions (TCP buffers, UDP drops)."""
        if self._up.is_set():
            self._up = trio.Event()
            log.info("link %s cut", self.config.name)

    def restore(self) -> None:
        """Resume delivery; buffered TCP bytes go out at once, in order."""
        if not self._up.is_set():
            self._up.set()
            log.info("link %s restored", self.config.name)

    def degrade(self, loss: float) -> None:
        """Drop each datagram (either direction) with ``loss`` on top of the link's own."""
        self.extra_loss = loss
        log.info("link %s: extra datagram loss %g", self.config.name, loss)

    def apply(self, message: LinkControl) -> str | None:
        """Apply a fault to the classical plane; its effect, or None (not this plane's)."""
        if message.plane == "quantum":
            return None
        if message.action == "cut":
            self.cut()
            return "classical cut (TCP held, UDP dropped)"
        if message.action == "restore":
            was_cut = self.is_cut
            self.restore()
            return "classical restored" if was_cut else "classical was not cut"
        if message.action == "corrupt":
            self.corrupt()
            return "next large TCP chunk corrupted"
        self.degrade(message.loss)
        return f"classical extra datagram loss {message.loss:g}"

    def lost_to_degrade(self) -> bool:
        return self.extra_loss > 0 and bool(self._degrade_rng.random() < self.extra_loss)

    def corrupt(self) -> None:
        """Flip one bit in the middle of the next large TCP chunk (either direction).

        A fault for testing authentication: a chunk of at least ``CORRUPT_MIN_BYTES`` lies
        inside bulk frames, so the flipped bit lands in a frame's payload, not its header.
        """
        self._corrupt_pending += 1
        log.info("link %s: will corrupt the next large chunk", self.config.name)

    def maybe_corrupt(self, data: bytes) -> bytes:
        if not self._corrupt_pending or len(data) < CORRUPT_MIN_BYTES:
            return data
        self._corrupt_pending -= 1
        self.corrupted += 1
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x10
        log.info("link %s: flipped a bit in a chunk of %d bytes", self.config.name, len(data))
        return bytes(flipped)

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def wait_up(self) -> None:
        while not self._up.is_set():
            await self._up.wait()

    def report(self) -> RelayReport:
        c = self.counters
        return RelayReport(
            self.config.name, self.config.a, self.config.b,
            c.bytes_ab, c.bytes_ba, c.messages, c.dropped, counters=c.extra(),
        )  # fmt: skip

    # -- timing --------------------------------------------------------------------------
    async def calibrate_timer(self) -> None:
        """Measure trio's oversleep of 1 ms sleeps and start the timer lead at its quantile."""
        late = []
        for _ in range(CALIBRATION_SLEEPS):
            target = trio.current_time() + 0.001
            await trio.sleep_until(target)
            late.append(trio.current_time() - target)
        self.timer.start_from(late)
        log.debug("timer lead calibrated to %.0f us", self.timer.lead * 1e6)

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` minus the timer lead, and learn from the lateness."""
        target = deadline - self.timer.lead
        if target > trio.current_time():
            await trio.sleep_until(target)
            self.timer.observe(trio.current_time() - deadline)

    # -- serving -------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind every socket, report ready (``self.listen`` filled), forward until cancelled."""
        host = self.config.host
        listeners: dict[str, list[trio.SocketListener]] = {}
        try:
            for side in SIDES:
                listeners[side] = await trio.open_tcp_listeners(0, host=host)
                udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
                self.udp.sockets[side] = udp
                await udp.bind((host, 0))
                self.listen[side] = {
                    "tcp": listeners[side][0].socket.getsockname()[1],
                    "udp": udp.getsockname()[1],
                }
            await self.calibrate_timer()
            for shaper in self.shapers.values():  # a delay schedule counts from emulated 0
                shaper.origin = self.clock.deadline(0.0)
            if self.config.capture is not None:
                self.capture = PcapngWriter(
                    Path(self.config.capture), max_bytes=self.config.capture_max_bytes,
                    interface=self.config.name, comment=(
                        f"qnet link {self.config.name}: {self.hosts['a'].address} = "
                        f"{self.config.a}, {self.hosts['b'].address} = {self.config.b}"))
            async with trio.open_nursery() as nursery:
                for side in SIDES:
                    handler = functools.partial(self.tcp.handle, side)
                    nursery.start_soon(trio.serve_listeners, handler, listeners[side])
                    nursery.start_soon(self.udp.receive, side)
                    nursery.start_soon(self.udp.deliver, side)
                task_status.started()
        finally:
            if self.capture is not None:
                self.capture.close()
            for udp in self.udp.sockets.values():
                udp.close()
            for group in listeners.values():
                for listener in group:
                    await trio.aclose_forcefully(listener)

    def fault(self, kind: str, message: str, *args: object) -> None:
        """Count a fault a stranger caused; the first of each kind is logged."""
        if self.counters.fault(kind):
            log.warning("link %s: " + message + " (%s; further ones only counted)",
                        self.config.name, *args, kind)  # fmt: skip


async def serve(
    config: RelayConfig, *, task_status: trio.TaskStatus[Relay] = trio.TASK_STATUS_IGNORED
) -> Counters:
    """Run the relay of ``config`` until ``relay.request_stop()`` or an MQTT stop message.

    Hands the ``Relay`` (ports in ``relay.listen``) to ``nursery.start`` once every socket is
    bound and, with MQTT, the control topics are subscribed. On stop, publishes the final
    counters (MQTT, at most ``FINAL_PUBLISH_TIMEOUT_S``) and returns them.
    """
    relay = Relay(config)
    async with contextlib.AsyncExitStack() as stack:
        mqtt = None
        if config.mqtt is not None:
            client_id = f"qnet-{config.run_id}-relay-{config.name}"
            mqtt = await stack.enter_async_context(telemetry.connect(config.mqtt, client_id))
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            if mqtt is not None:
                await nursery.start(relay_telemetry.control, relay, mqtt)
                nursery.start_soon(relay_telemetry.publish_metrics, relay, mqtt)
            nursery.start_soon(relay_telemetry.publish_traffic, relay, mqtt)
            task_status.started(relay)
            await relay.stop_requested.wait()
            if mqtt is not None:
                with trio.move_on_after(FINAL_PUBLISH_TIMEOUT_S) as scope:
                    payload = telemetry.encode(relay.report())
                    topic = telemetry.relay_result(config.run_id, config.name)
                    await mqtt.publish(topic, payload, qos=1, retain=True)
                if scope.cancelled_caught:
                    log.warning("link %s: final counters not acknowledged in time", config.name)
            nursery.cancel_scope.cancel()
    return relay.counters


async def _main(config: RelayConfig, ready_file: Path) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def run_relay(task_status: trio.TaskStatus[Relay]) -> None:
                await serve(config, task_status=task_status)
                nursery.cancel_scope.cancel()

            relay = await nursery.start(run_relay)
            write_ready(ready_file, listen=relay.listen)

            async def orphaned() -> None:
                await watch_parent()
                log.info("link %s: orchestrator gone, stopping", config.name)
                relay.request_stop()

            nursery.start_soon(orphaned)
            async for signum in signals:
                log.info("link %s: signal %d, stopping", config.name, signum)
                relay.request_stop()
                break
    log.info("link %s: final %s", config.name, msgspec.json.encode(relay.report()).decode())


def main() -> None:
    exit_quietly_on_sigterm()
    args = child_arguments("qnet link relay")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    config = read_config(args.config, RelayConfig)
    trio.run(_main, config, args.ready_file)


if __name__ == "__main__":
    main()
