"""result.json's ``entanglement`` entry of one ``qkd.bbm92`` app (b reports, a completes)."""

from __future__ import annotations

from typing import Any

from emulator.results import join_ends, print_rows


def merge(scenario: Any, app: Any, entries: list[dict]) -> list[dict]:
    """Join both ends' entries; every message is authenticated both ways, so rejects add."""
    if not entries:
        return []
    entry = join_ends(entries, f"bbm92/{app.a}-{app.b}")
    entry["auth_rejected"] = (entry.get("auth_rejected_a") or 0) + (
        entry.get("auth_rejected_b") or 0)
    return [entry]


ROWS = [("pairs", "pairs", ",d"), ("pairs/s (emulated)", "pairs_per_s", ",.0f"),
        ("fidelity (estimated)", "fidelity_mean", ".4f"),
        ("  standard error", "fidelity_std", ".4f"),
        ("fidelity (model)", "fidelity_model", ".4f"),
        ("CHSH S", "chsh", ".3f"), ("QBER", "qber", ".4f"),
        ("secret key bits (delivered)", "secret_bits", ",d"),
        ("  Cascade efficiency f", "ec_efficiency", ".3f"),
        ("  blocks ok / failed / aborted", "blocks", ""),
        ("  authentication rejects", "auth_rejected", ",d"),
        ("  keys equal at both ends", "keys_equal", "")]


def print_summary(console: Any, entry: dict) -> None:
    """Pair statistics, CHSH and the post-processed key."""
    shown = {**entry, "keys_equal": str(entry.get("key_sha256_a") == entry.get("key_sha256_b")),
             "blocks": f"{entry.get('blocks_ok')} / {entry.get('blocks_failed')} / "
                       f"{entry.get('blocks_aborted')}"}
    print_rows(console, f"entanglement {entry.get('name')} "
                        f"(path {' - '.join(entry.get('path') or [])})", shown, ROWS)
