"""The teleport app kind: teleportation over a direct link (spec, shell, result merge)."""

from emulator.apps import AppKind
from nodes.entanglement.teleport import results, spec

KIND = AppKind(
    kind="teleport", spec=spec.TeleportApp, entry="nodes.entanglement.teleport.shell:run",
    section="teleport", merge=results.merge, validate=spec.validate,
    summary=results.print_summary,
)
