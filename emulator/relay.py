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

Strangers: at most ``MAX_TCP_CONNECTIONS`` joined connections per side, silent or idle ones
closed, a reset or garbage ends only its connection; every refusal counted in
``RelayReport.counters`` and logged once per kind.

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
import time
from pathlib import Path

import msgspec
import trio

from emulator import relay_telemetry, telemetry
from emulator.capture import Host, PcapngWriter, TcpFlow, udp_frame
from emulator.child_config import (
    Endpoint,
    RelayConfig,
    child_arguments,
    read_config,
    write_ready,
)
from emulator.clock import EmulatedClock
from emulator.relay_core import (
    MAX_TIMER_LEAD_S,
    Counters,
    DatagramQueue,
    DirectionShaper,
    StreamOrder,
    TimerLead,
    link_rng,
)
from emulator.supervise import exit_quietly_on_sigterm, watch_parent
from emulator.telemetry import LinkControl, RelayReport

log = logging.getLogger("qnet.relay")

SIDES = ("a", "b")
MAX_CHUNK = 65536  # largest TCP read, and the largest UDP datagram accepted
MIN_CHUNK = 1500  # smallest TCP read size used under a rate limit (about one Ethernet frame)
CHUNK_SLICE_S = 0.002  # under a rate limit, read at most ~2 ms of serialization at a time
TCP_QUEUE_CHUNKS = 64  # chunks buffered per TCP direction before the relay stops reading
UDP_QUEUE_BYTES = 4 * 1024 * 1024  # datagrams beyond this backlog are tail-dropped
CALIBRATION_SLEEPS = 20
FINAL_PUBLISH_TIMEOUT_S = 1.0
CORRUPT_MIN_BYTES = 16384
MAX_TCP_CONNECTIONS = 256  # concurrent joined connections per side; more are closed at once
FIRST_BYTE_TIMEOUT_S = 30.0  # wall s a new connection may stay silent (its hello is unshaped)
IDLE_TIMEOUT_S = 600.0  # emulated s without a byte either way before a connection is closed


def _other(side: str) -> str:
    return "b" if side == "a" else "a"


def _direction_of(sender: str) -> str:
    """Counter/shaper key of traffic sent by ``sender``: "ab" or "ba"."""
    return "ab" if sender == "a" else "ba"


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
        self._udp_sockets: dict[str, trio.socket.SocketType] = {}
        self._udp_queues = {key: DatagramQueue() for key in ("ab", "ba")}
        self._udp_wake = {key: trio.Event() for key in ("ab", "ba")}
        self._corrupt_pending = 0
        self.corrupted = 0
        self._tcp_open = dict.fromkeys(SIDES, 0)
        self.idle_timeout = max(IDLE_TIMEOUT_S, IDLE_TIMEOUT_S / config.time_scale)
        self.clock = EmulatedClock(config.t0, config.time_scale)
        self.extra_loss = 0.0  # a degrade fault's datagram loss probability
        self._degrade_rng = link_rng(config.seed, config.name, "both", "degrade")
        self.capture: PcapngWriter | None = None
        self.hosts = {"a": Host.numbered(1), "b": Host.numbered(2)}

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

    def _lost_to_degrade(self) -> bool:
        return self.extra_loss > 0 and bool(self._degrade_rng.random() < self.extra_loss)

    def corrupt(self) -> None:
        """Flip one bit in the middle of the next large TCP chunk (either direction).

        A fault for testing authentication: a chunk of at least ``CORRUPT_MIN_BYTES`` lies
        inside bulk frames, so the flipped bit lands in a frame's payload, not its header.
        """
        self._corrupt_pending += 1
        log.info("link %s: will corrupt the next large chunk", self.config.name)

    def _maybe_corrupt(self, data: bytes) -> bytes:
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

    async def _wait_up(self) -> None:
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
        late.sort()
        start = late[int(self.timer.quantile * (len(late) - 1))]
        self.timer.lead = min(MAX_TIMER_LEAD_S, max(0.0, start))
        log.debug("timer lead calibrated to %.0f us", self.timer.lead * 1e6)

    async def _sleep_until(self, deadline: float) -> None:
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
                self._udp_sockets[side] = udp
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
                    handler = functools.partial(self._handle_tcp, side)
                    nursery.start_soon(trio.serve_listeners, handler, listeners[side])
                    nursery.start_soon(self._udp_receive, side)
                    nursery.start_soon(self._udp_deliver, side)
                task_status.started()
        finally:
            if self.capture is not None:
                self.capture.close()
            for udp in self._udp_sockets.values():
                udp.close()
            for group in listeners.values():
                for listener in group:
                    await trio.aclose_forcefully(listener)

    def _target(self, side: str) -> Endpoint:
        return self.config.targets[side]

    # -- TCP -----------------------------------------------------------------------------
    def _fault(self, kind: str, message: str, *args: object) -> None:
        """Count a fault a stranger caused; the first of each kind is logged."""
        if self.counters.fault(kind):
            log.warning("link %s: " + message + " (%s; further ones only counted)",
                        self.config.name, *args, kind)  # fmt: skip

    async def _handle_tcp(self, sender: str, accepted: trio.SocketStream) -> None:
        """Join a connection from ``sender`` to a new connection to its peer, shaped both ways.

        At most ``MAX_TCP_CONNECTIONS`` per side; a connection silent for
        ``FIRST_BYTE_TIMEOUT_S`` after it opened, or idle for ``idle_timeout`` wall seconds
        later, is closed. A reset or garbage ends this connection only.
        """
        self.counters.connections += 1
        if self._tcp_open[sender] >= MAX_TCP_CONNECTIONS:
            self._fault("rejected_connections", "more than %d connections from %s",
                        MAX_TCP_CONNECTIONS, sender)  # fmt: skip
            await trio.aclose_forcefully(accepted)
            return
        self._tcp_open[sender] += 1
        try:
            await self._join(sender, accepted)
        finally:
            self._tcp_open[sender] -= 1

    async def _join(self, sender: str, accepted: trio.SocketStream) -> None:
        target = self._target(_other(sender))
        try:
            peer = await trio.open_tcp_stream(target.host, target.tcp)
        except OSError as exc:
            self._fault("connect_failures", "cannot reach %s at %s:%d: %s",
                        _other(sender), target.host, target.tcp, exc)  # fmt: skip
            await trio.aclose_forcefully(accepted)
            return
        flow = None
        if self.capture is not None:
            try:
                port = accepted.socket.getpeername()[1]
            except OSError:  # the client is gone already; its bytes are still captured
                port = 0
            flow = TcpFlow(self.capture, (self.hosts[sender], port),
                           (self.hosts[_other(sender)], target.tcp))
            flow.open(time.time())
        idle = trio.CancelScope(deadline=trio.current_time() + FIRST_BYTE_TIMEOUT_S)
        try:
            with idle:
                async with accepted, peer, trio.open_nursery() as nursery:
                    pump = functools.partial(self._pump, cancel=nursery.cancel_scope,
                                             idle=idle, flow=flow)
                    nursery.start_soon(pump, accepted, peer, _direction_of(sender), "client")
                    nursery.start_soon(pump, peer, accepted, _direction_of(_other(sender)),
                                       "server")
        finally:
            if flow is not None:
                flow.close(time.time())
        if idle.cancelled_caught:
            self._fault("idle_timeouts", "closed a connection from %s that stayed silent", sender)

    def _chunk_size(self, key: str) -> int:
        rate = self.shapers[key].wall_rate_bps
        if rate is None:
            return MAX_CHUNK
        return int(min(MAX_CHUNK, max(MIN_CHUNK, rate / 8 * CHUNK_SLICE_S)))

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        key: str,
        role: str,
        *,
        cancel: trio.CancelScope,
        idle: trio.CancelScope,
        flow: TcpFlow | None = None,
    ) -> None:
        """Copy one direction of a TCP connection; when it ends, end the whole connection.

        Every chunk read pushes the connection's ``idle`` deadline back; a delivered chunk
        goes to the capture's ``flow`` as sent by ``role`` ("client" or "server")."""
        shaper = self.shapers[key]
        order = StreamOrder()
        chunk = self._chunk_size(key)
        send, receive = trio.open_memory_channel[tuple[float, bytes]](TCP_QUEUE_CHUNKS)

        async def read() -> None:
            async with send:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while data := await source.receive_some(chunk):
                        idle.deadline = trio.current_time() + self.idle_timeout
                        release = order.release(shaper.transmit(trio.current_time(), len(data)))
                        await send.send((release, data))

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                # inside the nursery, so a peer that closed mid-flight is not an error group
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    async with receive:
                        async for release, data in receive:
                            await self._sleep_until(release)
                            await self._wait_up()
                            data = self._maybe_corrupt(data)
                            await sink.send_all(data)
                            self.counters.add(key, len(data))
                            if flow is not None:
                                flow.data(role, time.time(), data)
                nursery.cancel_scope.cancel()
        finally:
            cancel.cancel()

    # -- UDP -----------------------------------------------------------------------------
    async def _udp_receive(self, sender: str) -> None:
        """Take datagrams from ``sender``'s node endpoint on its socket; queue them for the
        peer or drop them. Datagrams from any other address are dropped and counted."""
        sock = self._udp_sockets[sender]
        key = _direction_of(sender)
        shaper, queue = self.shapers[key], self._udp_queues[key]
        own = self._target(sender)
        expected = (own.host, own.udp)  # the node of this side; anyone else is a stranger
        while True:
            try:
                data, source = await sock.recvfrom(MAX_CHUNK)
            except OSError:  # e.g. ICMP errors surfacing on Linux; the socket stays usable
                continue
            if source[:2] != expected:
                self._fault("foreign_datagrams", "dropped a datagram from %s:%d on %s's socket",
                            source[0], source[1], sender)  # fmt: skip
                continue
            if (self.is_cut or shaper.lost() or self._lost_to_degrade()
                    or queue.pending_bytes + len(data) > UDP_QUEUE_BYTES):
                self.counters.dropped += 1
                continue
            if queue.push(shaper.transmit(trio.current_time(), len(data)), data):
                self._udp_wake[key].set()

    async def _udp_deliver(self, sender: str) -> None:
        """Send queued datagrams of ``sender`` to the peer's endpoint when they are due."""
        receiver = _other(sender)
        key = _direction_of(sender)
        sock = self._udp_sockets[receiver]  # so the peer's reply comes back on its own socket
        target = self._target(receiver)
        address = (target.host, target.udp)
        queue = self._udp_queues[key]
        while True:
            wake = self._udp_wake[key] = trio.Event()
            deadline = queue.next_deadline()
            target_time = deadline - self.timer.lead
            timed = target_time > trio.current_time()  # also true when empty (inf)
            if timed:
                with trio.move_on_at(target_time) as scope:
                    await wake.wait()
                if scope.cancelled_caught and timed:
                    self.timer.observe(trio.current_time() - deadline)
            for payload in queue.pop_due(trio.current_time() + self.timer.lead):
                if self.is_cut:
                    self.counters.dropped += 1
                    continue
                try:
                    await sock.sendto(payload, address)
                except OSError as exc:
                    log.debug("link %s: UDP send to %s failed: %s", self.config.name, address, exc)
                    self.counters.dropped += 1
                else:
                    self.counters.add(key, len(payload))
                    if self.capture is not None:
                        self.capture.write(time.time(), udp_frame(
                            self.hosts[sender], self.hosts[receiver], self._target(sender).udp,
                            target.udp, payload))
            await trio.lowlevel.checkpoint()


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
