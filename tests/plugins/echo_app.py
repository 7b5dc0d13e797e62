"""A small app kind defined outside qnet, to test the plugin path (``QNET_APP_PLUGINS``).

``a`` sends ``count`` numbered messages over its classical channel to ``b``, which echoes
each; ``a`` checks every echo and reports the round trips, ``b`` how many it echoed. The merge
joins both into one ``echo`` entry (``round_trips`` counted from what ``a`` saw come back).
Registered with ``QNET_APP_PLUGINS=plugins.echo_app:KIND`` (``tests/`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import statistics
import time
from typing import Annotated, Any

from msgspec import Meta, Struct

from emulator.apps import AppKind
from emulator.scenario import Name, ScenarioError

CHANNEL = "test.echo"


class EchoApp(Struct, tag="test.echo", tag_field="kind", forbid_unknown_fields=True):
    """``count`` messages from ``a`` to ``b`` and back, over the link between them."""

    a: Name
    b: Name
    count: Annotated[int, Meta(ge=1, le=10_000)] = 20


def validate(scenario: Any, index: int, app: EchoApp) -> None:
    if scenario.link_between(app.a, app.b) is None:
        raise ScenarioError(f"apps[{index}].b: no link between {app.a!r} and {app.b!r}")


async def run(node: Any, app: EchoApp) -> list[dict]:
    """The node side: ``a`` sends and checks, ``b`` echoes."""
    if node.name == app.b:
        channel = await node.transport.accept(app.a, CHANNEL)
        for _ in range(app.count):
            await channel.send(await channel.receive())
        return [{"role": "b", "echoed": app.count}]
    await node.clock.sleep_until(node.t_start)
    channel = await node.transport.connect(app.b, CHANNEL)
    rtts, ok = [], 0
    for k in range(app.count):
        sent = f"echo {k}".encode()
        t0 = time.monotonic()
        await channel.send(sent)
        ok += await channel.receive() == sent
        rtts.append(time.monotonic() - t0)
    return [{"role": "a", "sent": app.count, "echo_ok": ok,
             "rtt_ms_median": statistics.median(rtts) * 1e3}]


def merge(scenario: Any, app: EchoApp, entries: list[dict]) -> list[dict]:
    """One entry per app; ``round_trips`` is 0 when ``a`` reported nothing."""
    by_role = {e.get("role"): e for e in entries}
    a, b = by_role.get("a", {}), by_role.get("b", {})
    return [{"name": f"{app.a}-{app.b}", "sent": a.get("sent"),
             "round_trips": a.get("echo_ok", 0), "echoed_by_b": b.get("echoed"),
             "rtt_ms_median": a.get("rtt_ms_median"),
             "reported": sorted(role for role in by_role if role)}]


KIND = AppKind(kind="test.echo", spec=EchoApp, entry="plugins.echo_app:run", section="echo",
               merge=merge, validate=validate)
