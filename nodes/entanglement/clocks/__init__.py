"""The clocks.compare app kind: Bell/GHZ against unentangled Ramsey comparison of node clocks."""

from emulator.apps import AppKind
from nodes.entanglement.clocks import results, spec

KIND = AppKind(
    kind="clocks.compare", spec=spec.ClocksApp, entry="nodes.entanglement.clocks.shell:run",
    section="clocks", merge=results.merge, validate=spec.validate,
    summary=results.print_summary, nodes=lambda app: list(app.nodes),
)
