"""``hybrid.send``: hybrid packets (classical header + flying qubit) from ``src`` to ``dst``
over routers that switch and compensate but never measure (issue 9; docs/net.md, "Hybrid").

``spec`` is the scenario table, ``shell`` the node side (sender, destination, routers),
``results`` the merge into result.json ``hybrid`` with the model of the path.
"""

from emulator.apps import AppKind
from nodes.apps.hybrid import results, spec

KIND = AppKind(
    kind="hybrid.send", spec=spec.HybridSendApp, entry="nodes.apps.hybrid.shell:run",
    section="hybrid", merge=results.merge, validate=spec.validate, nodes=spec.nodes,
    summary=results.print_summary, extra={"routing": True},
)
