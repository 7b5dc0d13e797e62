from emulator.supervise import exit_quietly_on_sigterm

exit_quietly_on_sigterm()  # before the heavy imports: a stop while starting up exits 0

from emulator.apps import kinds  # noqa: E402
from nodes.runtime import main  # noqa: E402

# Load every app kind (and what it imports, scipy included) now, before the ready file: done
# lazily at control/start it blocked the node's event loop inside the run (bench/entanglement).
kinds()
main()
