"""Run every benchmark (or those named on the command line) and print their JSON summaries.

Fuzz campaigns (``fuzz_*``) are long and not figures: ``make fuzz`` runs them by name."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import bench


def main() -> int:
    names = sys.argv[1:] or sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__)
        if not m.name.startswith(("_", "fuzz_")))
    failed = []
    for name in names:
        print(f"== bench {name}", flush=True)
        try:
            result = importlib.import_module(f"bench.{name}").main()
        except Exception as exc:  # a broken benchmark must not hide the others
            failed.append(name)
            print(f"   failed: {exc!r}", flush=True)
            continue
        print(json.dumps(result, indent=1, default=str)[:2000], flush=True)
    print(f"results in {Path(bench.__file__).parent / 'results'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
