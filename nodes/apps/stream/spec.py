"""``[[apps]] kind = "classical.stream"``: who sends to whom, how fast, how big."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from emulator.scenario import Name, NonNegative, Scenario, ScenarioError

HEADER_BYTES = 16  # each message starts with its index (u64) and its send time (f64)
MAX_SIZE = 60000  # a message rides one UDP datagram with the routed frame around it


class StreamApp(Struct, tag="classical.stream", tag_field="kind", forbid_unknown_fields=True):
    """``a`` writes ``rate_hz`` messages of ``size_bytes`` per second to ``b`` from ``start_s``
    (after routing found ``b``) until ``stop_before_end_s`` before the end; the rest of the
    run lets retransmissions finish. ``port`` defaults to 1000 + the app's index."""

    a: Name
    b: Name
    rate_hz: Annotated[float, Meta(gt=0, le=5000)] = 100.0
    size_bytes: Annotated[int, Meta(ge=HEADER_BYTES, le=MAX_SIZE)] = 64
    start_s: NonNegative = 0.0
    stop_before_end_s: NonNegative = 1.0
    port: Annotated[int, Meta(ge=1, le=65535)] | None = None


def validate(sc: Scenario, i: int, app: StreamApp) -> None:
    if app.a == app.b:
        raise ScenarioError(f"apps[{i}].b: the two ends must differ")
    if app.start_s + app.stop_before_end_s >= sc.scenario.duration_s:
        raise ScenarioError(f"apps[{i}].stop_before_end_s: start_s + stop_before_end_s must "
                            f"be shorter than the run ({sc.scenario.duration_s:g} s)")
    if app.port is None:
        app.port = 1000 + i
    for j, other in enumerate(sc.apps[:i]):
        if isinstance(other, StreamApp) and other.b == app.b and other.port == app.port:
            raise ScenarioError(f"apps[{i}].port: {app.port} is apps[{j}]'s at {app.b!r}")
