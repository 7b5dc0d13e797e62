"""The ``clocks.compare`` app: Bell/GHZ and unentangled Ramsey comparison of the nodes' clocks.

Every node runs the same chain role (``ends.py`` for the messages and the estimators): n0 opens
each round on a heralded pair of its right link, inner nodes fuse, the last node corrects; all
measure at the round's ``t_meas`` and the parities travel back to n0. Beside that, each node
runs ``rounds`` unentangled Ramsey interrogations of a fresh |+> (prepare, wait T, measure Y).
At most ``in_flight`` rounds of each kind are open at a node at once (memory slots).
"""

from __future__ import annotations

import logging
import math

import trio

from nodes import remote_errors
from nodes.daemon_client import DaemonError
from nodes.entanglement.clocks import ends
from nodes.entanglement.clocks.ends import (
    Drop,
    End,
    Parity,
    RamseyEstimate,
    Start,
    decode,
    encoder,
)
from nodes.entanglement.clocks.spec import ClocksApp
from nodes.entanglement.qubits import QuantumOps
from nodes.errors import RemoteProtocolError, UnexpectedMessage
from nodes.sdk import NodeContext


def app_name(app: ClocksApp) -> str:
    return "-".join(app.nodes)


def _link(node: NodeContext, u: str, v: str) -> str:
    link = node.view.link_between(u, v)
    assert link is not None
    return link.id


async def run(node: NodeContext, app: ClocksApp) -> list[dict]:
    return [await ChainNode(node, app).run()]


class ChainNode:
    """One node's part: its place ``k`` on the chain, its channels and its two estimators."""

    def __init__(self, node: NodeContext, app: ClocksApp) -> None:
        self.node, self.app = node, app
        self.ops = QuantumOps(node.daemon, node.name)
        self.k = app.nodes.index(node.name)
        self.sign = app.sign_list()[self.k]
        self.first, self.last = self.k == 0, self.k == len(app.nodes) - 1
        self.left_link = None if self.first else _link(node, app.nodes[self.k - 1], node.name)
        self.right_link = None if self.last else _link(node, node.name, app.nodes[self.k + 1])
        self.left = self.right = None
        self.entangled = RamseyEstimate(app.rounds)
        self.local = RamseyEstimate(app.rounds)
        self.held: dict[int, tuple[int, float]] = {}  # left link pair id -> slot, t_stored
        self.arrived = trio.Condition()
        self.parities: dict[int, int] = {}
        self.parity_came = trio.Condition()
        self.pair_lock = trio.Lock()
        self.rounds_done = 0
        self.dropped = 0

    async def run(self) -> dict:
        name = app_name(self.app)
        errors: list[RemoteProtocolError] = []
        await self._open_channels()
        await self.node.clock.sleep_until(self.node.t_start)
        if self.right_link is not None:
            # halves held = open rounds + waiting ones: keep at most one waiting (it goes
            # stale); an inner node measures its right half at once after the CNOT
            cap = self.app.in_flight + 1 if self.first else 2
            await self.ops.start_link(self.right_link, max_pending=cap)
        if self.left_link is not None:
            # the right end caps its halves too (open rounds, echo, drops not yet applied), so
            # that the link never takes the slots of the unentangled rounds
            await self.ops.start_link(self.left_link, max_pending=2 * self.app.in_flight + 2)
        try:
            async with trio.open_nursery() as nursery:
                for channel in (self.left, self.right):
                    if channel is not None:
                        nursery.start_soon(channel.run_writer)
                if self.left_link is not None:
                    nursery.start_soon(self._feed)
                if self.right is not None:
                    nursery.start_soon(self._read_parities)
                # rounds still open shortly after the run's end (a lost peer) are given up
                grace = self.node.t_end + 2 * self.app.interrogation_s + 2 * self.app.max_age_s
                with trio.move_on_at(self.node.clock.deadline(grace + 1.0)):
                    async with trio.open_nursery() as work:
                        work.start_soon(self._local_rounds)
                        if self.first:
                            await self._open_rounds(work)
                        else:
                            await self._serve_rounds(work)
                if self.right is not None:
                    self.right.post(encoder.encode(End(self.rounds_done)))
                for channel in (self.left, self.right):
                    if channel is not None:
                        await channel.drain()
                nursery.cancel_scope.cancel()
        except* RemoteProtocolError as group:
            errors = await remote_errors.report_group(self.node, name, group)
        if self.right_link is not None:
            with trio.CancelScope(shield=True):
                try:
                    await self.ops.stop_link(self.right_link)
                except DaemonError as exc:
                    logging.getLogger("qnet.node").info("stop %s: %s", self.right_link, exc)
        return self.entry(name, len(errors))

    def entry(self, name: str, errors: int) -> dict:
        out = {"section": "clocks", "role": "report" if self.first else "end", "name": name,
               "node": self.node.name, "sign": self.sign, "local": self.local.summary(),
               "local_checkpoints": self.local.checkpoints, "pairs_dropped": self.dropped,
               "remote_errors": errors}
        if self.first:
            out["entangled"] = self.entangled.summary()
            out["entangled_checkpoints"] = self.entangled.checkpoints
        return out

    async def _open_channels(self) -> None:
        channel = f"clocks.compare/{app_name(self.app)}"
        async with trio.open_nursery() as nursery:
            async def dial() -> None:
                self.right = await self.node.transport.connect(self.app.nodes[self.k + 1],
                                                               channel)

            async def wait() -> None:
                self.left = await self.node.transport.accept(self.app.nodes[self.k - 1],
                                                             channel)

            if not self.last:
                nursery.start_soon(dial)
            if not self.first:
                nursery.start_soon(wait)

    # -- unentangled Ramsey ---------------------------------------------------------------------

    async def _local_rounds(self) -> None:
        limiter = trio.Semaphore(self.app.in_flight)
        async with trio.open_nursery() as nursery:
            with trio.move_on_at(self.node.clock.deadline(self.node.t_end)):
                for _ in range(self.app.rounds):
                    await limiter.acquire()
                    nursery.start_soon(self._local_round, limiter)

    async def _local_round(self, limiter: trio.Semaphore) -> None:
        try:
            prepared = await self.ops.prepare(math.pi / 2, 0.0)  # |+>
            await self.node.clock.sleep_until(prepared.t + self.app.interrogation_s)
            bits, t = await self.ops.measure_array([prepared.qubit], "Y")
            self.local.add(int(bits[0]), t - prepared.t)
        finally:
            limiter.release()

    # -- entangled rounds ---------------------------------------------------------------------

    async def _right_pair(self):
        """The newest heralded pair of the right link (this node holds its left half) if it is
        fresh; every older one (they queue while rounds are open) is discarded here and, by
        ``Drop``, at the right neighbour."""
        async with self.pair_lock:
            while True:
                reply = await self.ops.pairs(self.right_link, max=1024, timeout_s=1.0)
                if not reply.pairs:
                    continue
                *old, newest = sorted(reply.pairs, key=lambda x: x.t_stored)
                if self.node.clock.now() - newest.t_stored > self.app.max_age_s:
                    old.append(newest)
                    newest = None
                if old:
                    await self.ops.discard(*(self.ops.ref(x.slot) for x in old))
                    for x in old:
                        self.right.post(encoder.encode(Drop(x.pair)))
                    self.dropped += len(old)
                if newest is not None:
                    return newest

    async def _open_rounds(self, nursery: trio.Nursery) -> None:
        """n0: one round per heralded pair, at most ``in_flight`` open."""
        limiter = trio.Semaphore(self.app.in_flight)
        with trio.move_on_at(self.node.clock.deadline(self.node.t_end)):
            for r in range(self.app.rounds):
                await limiter.acquire()
                pair = await self._right_pair()
                # a heralded half may be older than now: tau = t_meas - t_stored >= T
                t_meas = self.node.clock.now() + self.app.interrogation_s
                tau = t_meas - pair.t_stored
                self.right.post(encoder.encode(Start(r, pair.pair, 0, t_meas, tau,
                                                     pair.t_stored)))
                nursery.start_soon(self._first_round, r, pair, t_meas, limiter)

    async def _first_round(self, r: int, pair, t_meas: float, limiter) -> None:
        try:
            await self.node.clock.sleep_until(t_meas)
            bits, t = await self.ops.measure_array([self.ops.ref(pair.slot)], "Y")
            rest = await self._parity_of(r)
            self.entangled.add(int(bits[0]) ^ rest, t - pair.t_stored)
            self.rounds_done += 1
            self.node.partial(self.entry(app_name(self.app), 0))
        finally:
            limiter.release()

    async def _serve_rounds(self, nursery: trio.Nursery) -> None:
        """Inner and last nodes: one task per ``Start`` until ``End``."""
        while True:
            message = decode(await self.left.receive())
            if isinstance(message, End):
                return
            if isinstance(message, Drop):
                nursery.start_soon(self._drop, message.pair)
                continue
            if not isinstance(message, Start):
                raise UnexpectedMessage(f"{type(message).__name__} from the left")
            nursery.start_soon(self._chain_round, message)

    async def _chain_round(self, start: Start) -> None:
        async with self.arrived:
            while start.pair not in self.held:
                await self.arrived.wait()
        slot, t_stored = self.held.pop(start.pair)
        q = self.ops.ref(slot)
        if self.last:
            t_x = self.node.clock.now()
            if ends.last_flip(start.corr, self.sign):
                t_x = await self.ops.gate("X", q)
            pre = ends.held_time(t_stored, start.t_up, start.corr, t_x)
            t_meas = ends.measure_time(start.tau, self.sign, pre, t_x)
        else:
            before, after = ends.inner_flips(start.corr, self.sign)
            t_fix = self.node.clock.now()
            if before:
                t_fix = await self.ops.gate("X", q)
            pair = await self._right_pair()
            r_half = self.ops.ref(pair.slot)
            await self.ops.gate("CNOT", q, r_half)
            (m,), t_f = await self.ops.measure_array([r_half], "Z")
            # both halves gathered +phase until the fusion; then the flip (sign -1)
            pre = (ends.held_time(t_stored, start.t_up, start.corr, t_fix) + (t_f - t_fix)
                   + (t_f - pair.t_stored))
            t_last = t_f
            if after:
                t_last = await self.ops.gate("X", q)
                pre += t_last - t_f
            t_meas = ends.measure_time(start.tau, self.sign, pre, t_last)
            self.right.post(encoder.encode(Start(start.round, pair.pair, int(m), start.t_meas,
                                                 start.tau, t_f)))
        await self.node.clock.sleep_until(t_meas)
        (bit,), _ = await self.ops.measure_array([q], "X")
        rest = 0 if self.last else await self._parity_of(start.round)
        self.left.post(encoder.encode(Parity(start.round, int(bit) ^ rest)))
        self.rounds_done += 1

    async def _drop(self, pair: int) -> None:
        async with self.arrived:
            while pair not in self.held:
                await self.arrived.wait()
        await self.ops.discard(self.ops.ref(self.held.pop(pair)[0]))

    async def _feed(self) -> None:
        """Halves of the left link's pairs as they are heralded, by pair id."""
        while True:
            reply = await self.ops.pairs(self.left_link, timeout_s=0.5)
            async with self.arrived:
                for x in reply.pairs:
                    self.held[x.pair] = (x.slot, x.t_stored)
                self.arrived.notify_all()

    async def _read_parities(self) -> None:
        while True:
            message = decode(await self.right.receive())
            if not isinstance(message, Parity):
                raise UnexpectedMessage(f"{type(message).__name__} from the right")
            async with self.parity_came:
                self.parities[message.round] = message.bit
                self.parity_came.notify_all()

    async def _parity_of(self, r: int) -> int:
        async with self.parity_came:
            while r not in self.parities:
                await self.parity_came.wait()
        return self.parities.pop(r)
