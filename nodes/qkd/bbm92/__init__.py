"""The qkd.bbm92 app kind: entanglement-based QKD (spec, shell, result merge)."""

from emulator.apps import AppKind
from nodes.qkd.bbm92 import results, spec

KIND = AppKind(
    kind="qkd.bbm92", spec=spec.BBM92App, entry="nodes.qkd.bbm92.shell:run",
    section="entanglement", merge=results.merge, validate=spec.validate,
    summary=results.print_summary,
)
