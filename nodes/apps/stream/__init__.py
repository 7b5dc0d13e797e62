"""``classical.stream``: a sequenced message stream from ``a`` to ``b`` over the routed plane
(nodes/net), reporting sent, delivered, lost, duplicates, out-of-order and the longest gap.

``spec`` is the scenario table, ``shell`` the node side, ``results`` the merge into
result.json ``streams``.
"""

from emulator.apps import AppKind
from nodes.apps.stream import results, spec

KIND = AppKind(
    kind="classical.stream", spec=spec.StreamApp, entry="nodes.apps.stream.shell:run",
    section="streams", merge=results.merge, validate=spec.validate,
    summary=results.print_summary, extra={"routing": True},
)
