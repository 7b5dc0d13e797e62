"""Trusted key relay: end-to-end keys over chains of QKD links, one-time-padded hop by hop.

``core`` is the protocol (sans-I/O), ``messages`` its wire format, ``spec`` the
``[[apps]] kind = "kms.relay"`` table and result merge, ``shell`` the node side.
"""

from emulator.apps import AppKind
from nodes.services.relay import spec

KIND = AppKind(
    kind="kms.relay", spec=spec.RelayApp, entry="nodes.services.relay.shell:run",
    section="relay", merge=spec.merge, validate=spec.validate, nodes=spec.nodes,
    summary=spec.print_summary,
    extra={"tunnels": True, "key_pairs": lambda app: [(app.a, app.b)]},
)
