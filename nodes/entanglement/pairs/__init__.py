"""The entanglement.pairs app kind: end-to-end pairs over repeaters (spec, shell, result merge).

Every node on the path runs the shell (``nodes``): the ends measure, the repeaters swap."""

from emulator.apps import AppKind
from nodes.entanglement.pairs import results, spec

KIND = AppKind(
    kind="entanglement.pairs", spec=spec.PairsApp, entry="nodes.entanglement.pairs.shell:run",
    section="entanglement", merge=results.merge, validate=spec.validate, nodes=spec.nodes,
    summary=results.print_summary,
)
