"""Ctrl-C outside the orchestrator's own handling exits 130 at once, without a traceback.

Installed before ``qnet`` imports its heavy modules. While a run is under way the
orchestrator's trio signal receiver takes SIGINT over (and trio leaves a non-default handler
alone), so this fires only before a run starts or after it ended: nothing to stop then, and
any child still alive is taken along by its PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import os
import signal
import sys

EXIT_INTERRUPTED = 130


def _exit(signum: int, frame: object) -> None:
    try:
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError, RuntimeError):
        pass
    os._exit(EXIT_INTERRUPTED)


def exit_130_on_sigint() -> None:
    """Install the handler, unless SIGINT is ignored (then it stays ignored)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _exit)
