"""``[[apps]] kind = "teleport"``: the spec; it needs a direct entanglement link."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from emulator.scenario import Name, Scenario


class TeleportApp(Struct, tag="teleport", tag_field="kind", forbid_unknown_fields=True):
    """Teleport ``count`` states from ``a`` to ``b`` over a direct entanglement link; ``state``
    is ``random`` (uniform on the Bloch sphere) or one of ``0 1 + - r l``."""

    a: Name
    b: Name
    count: Annotated[int, Meta(ge=1, le=1_000_000)] = 200
    state: Literal["random", "0", "1", "+", "-", "r", "l"] = "random"


def validate(sc: Scenario, i: int, app: TeleportApp) -> None:
    sc.require_entanglement_link(i, app.a, app.b, None)
