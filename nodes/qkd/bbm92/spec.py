"""``[[apps]] kind = "qkd.bbm92"``: the spec; it needs a direct entanglement link."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from emulator.scenario import Name, Scenario


class BBM92App(Struct, tag="qkd.bbm92", tag_field="kind", forbid_unknown_fields=True):
    """Entanglement-based QKD between ``a`` and ``b`` on a direct entanglement link: Z/X
    measurements for the key, CHSH settings on a fraction of the pairs, then the QKD
    post-processing (Cascade, verification, privacy amplification, authentication) with the
    BBM92 length n [1 - h(e)] - leak - verification - 2 log2(1/eps_pa) per block."""

    a: Name
    b: Name
    count: Annotated[int, Meta(ge=100, le=100_000_000)] = 20_000
    chsh_fraction: Annotated[float, Meta(gt=0, lt=1)] = 0.2
    sample_fraction: Annotated[float, Meta(gt=0, lt=1)] = 0.1
    link: Name | None = None
    sift_interval_s: Annotated[float, Meta(gt=0)] = 0.5  # wall seconds between batches
    block_bits: Annotated[int, Meta(ge=1000)] = 60_000
    min_block_bits: Annotated[int, Meta(ge=1000)] = 20_000
    cascade: Literal["original", "yanetal", "option7", "option8"] = "original"
    qber_abort: Annotated[float, Meta(gt=0, le=0.5)] = 0.11
    eps_pa: Annotated[float, Meta(gt=0, lt=1)] = 1e-10
    psk: Annotated[str, Meta(min_length=16)] = "qnet pre-shared authentication secret"


def validate(sc: Scenario, i: int, app: BBM92App) -> None:
    """Two different ends joined by a link (``link`` or the one between them) with pairs."""
    sc.require_entanglement_link(i, app.a, app.b, app.link)
