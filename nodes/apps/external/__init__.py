"""The external app kind: a program in any language at each end, driving its node through
the node's local app socket (``nodes/app_socket.py``)."""

from emulator.apps import AppKind
from nodes.apps.external import spec

KIND = AppKind(
    kind="external", spec=spec.ExternalApp, entry="nodes.apps.external.shell:run",
    section="external", merge=spec.merge, validate=spec.validate, summary=spec.print_summary,
)
