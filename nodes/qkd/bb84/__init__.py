"""The qkd.bb84 app kind: prepare-and-measure decoy BB84 (spec, shell, result merge)."""

from emulator.apps import AppKind
from nodes.qkd.bb84 import results, spec

KIND = AppKind(
    kind="qkd.bb84", spec=spec.BB84App, entry="nodes.qkd.bb84.shell:run", section="qkd",
    merge=results.merge, validate=spec.validate, summary=results.print_summary,
    extra={"predict": lambda sc, app, f: results.predicted_bb84(spec.link_of(sc, app), app, f),
           "default_ec_efficiency": results.DEFAULT_EC_EFFICIENCY},
)
