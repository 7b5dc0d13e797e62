from emulator.interrupt import exit_130_on_sigint

exit_130_on_sigint()  # before the slow imports: Ctrl-C while starting up exits 130 quietly

from emulator.cli import main  # noqa: E402

main()
