"""Start a program as pid >1 of its node's PID namespace, and stand in for it.

``python -m emulator.netns.enter -- COMMAND...`` is what the supervisor starts for a
``[[nodes.run]]`` program under ``--netns``, already inside the node's network namespace and
with the node's PID namespace for its children (``Child.pidns``; a process cannot enter a PID
namespace itself, and one whose children go elsewhere cannot start threads, so the program
runs as this process's child). It forwards SIGTERM, SIGINT and SIGHUP to the program and exits
as it did. Whatever the program leaves running dies with the namespace's init, at the latest
when the run ends, however it ends. Imports nothing beyond the standard library: no threads.
"""

from __future__ import annotations

import os
import signal
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m emulator.netns.enter -- COMMAND...", file=sys.stderr)
        return 2
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"cannot start {argv[0]}: {exc}", file=sys.stderr)
        os._exit(127)
    for signum in FORWARDED:
        signal.signal(signum, lambda signum, frame: os.kill(pid, signum))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # exit as the program did (by that signal)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
