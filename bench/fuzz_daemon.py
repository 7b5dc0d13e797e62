"""Longer fuzz campaign against the daemon's framing and request decoding (bounded in time).

Runs the harness of tests/daemon/test_fuzz.py (``tests/daemon/fuzz_harness.py``) with fresh
random seeds in batches until ``QNET_FUZZ_SECONDS`` (default 120) have passed; any violated
invariant raises with hypothesis's shrunk example. ``python -m bench fuzz_daemon``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "daemon"))

from fuzz_harness import run_session, streams  # noqa: E402

RESULT = Path(__file__).resolve().parent / "results" / "fuzz_daemon.json"
BATCH = 200


def _campaign(authenticate: bool, examples: dict[str, int], key: str) -> None:
    @settings(max_examples=BATCH, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(streams())
    def campaign(chunks: list[bytes]) -> None:
        run_session(chunks, authenticate)
        examples[key] += 1

    campaign()


def main() -> dict:
    budget = float(os.environ.get("QNET_FUZZ_SECONDS", "120"))
    examples = {"before_hello": 0, "after_hello": 0}
    t0 = time.monotonic()
    batches = 0
    while time.monotonic() - t0 < budget:
        for key in examples:
            _campaign(key == "after_hello", examples, key)
        batches += 1
    out = {"seconds": round(time.monotonic() - t0, 1), "batches": batches,
           "examples": examples, "violations": 0}
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
