from emulator.supervise import exit_quietly_on_sigterm

exit_quietly_on_sigterm()  # before the heavy imports: a stop while starting up exits 0

from nodes.runtime import main  # noqa: E402

main()
