"""``[[apps]] kind = "qkd.bb84"``: the spec and its checks against the links of the scenario."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from emulator.scenario import Link, Name, Scenario, ScenarioError


class BB84App(Struct, tag="qkd.bb84", tag_field="kind", forbid_unknown_fields=True):
    """Prepare-and-measure BB84 from ``a`` (sender) to ``b`` (receiver)."""

    a: Name
    b: Name
    link: Name | None = None
    sample_fraction: Annotated[float, Meta(gt=0, lt=1)] = 0.1
    sift_interval_s: Annotated[float, Meta(gt=0)] = 0.5
    postprocessing: bool = True  # needs decoys = [nu, 0.0]; False stops after sifting
    block_bits: Annotated[int, Meta(ge=1000)] = 100_000
    min_block_bits: Annotated[int, Meta(ge=1000)] = 10_000
    cascade: Literal["original", "yanetal", "option7", "option8"] = "yanetal"
    qber_abort: Annotated[float, Meta(gt=0, le=0.5)] = 0.11
    eps_pa: Annotated[float, Meta(gt=0, lt=1)] = 1e-10
    psk: Annotated[str, Meta(min_length=16)] = "qnet pre-shared authentication secret"
    finite_key: bool = False  # Lim et al. 2014 bounds: key from Z basis, X basis tests
    eps_sec: Annotated[float, Meta(gt=0, lt=1)] = 1e-10
    eps_cor: Annotated[float, Meta(gt=0, lt=1)] = 1e-15
    # Y1, e1 bounds: Ma05 vacuum + weak (Poisson source) or the LP over the source's own
    # stated P(n) (emulator.physics.decoy_lp; any source kind); asymptotic, not with finite_key
    decoy_estimator: Literal["analytic", "lp"] = "analytic"


def link_of(sc: Scenario, app: BB84App) -> Link:
    """The quantum link the app runs on (validated: it exists and has a source at ``a``)."""
    link = sc.find_link(app.link, app.a, app.b)
    assert link is not None
    return link


def validate(sc: Scenario, i: int, app: BB84App) -> None:
    """The link exists, has a [quantum] part with its source at ``a``, decoys if needed."""
    link = sc.find_link(app.link, app.a, app.b)
    if link is None:
        raise ScenarioError(f"apps[{i}].link: no link between {app.a!r} and {app.b!r}")
    if link.quantum is None:
        raise ScenarioError(f"apps[{i}].link: link {link.id!r} has no [quantum] part")
    where = f"links[{sc.links.index(link)}].quantum.source"
    source = link.quantum.source
    if source.probabilities is not None and (
            len(source.probabilities) != len(source.intensities)
            or abs(sum(source.probabilities) - 1) > 1e-9):
        raise ScenarioError(f"{where}.probabilities: need one per intensity "
                            f"({len(source.intensities)}) summing to 1")
    if app.postprocessing and not (
            len(source.decoys) == 2 and source.mu > source.decoys[0] > 0
            and source.decoys[1] == 0):
        raise ScenarioError(
            f"apps[{i}].postprocessing: decoy-state estimation needs {where}.decoys = [nu, 0.0] "
            f"with 0 < nu < mu (or set postprocessing = false)")
    if app.decoy_estimator == "lp" and app.finite_key:
        raise ScenarioError(f"apps[{i}].decoy_estimator: 'lp' is asymptotic; finite_key uses "
                            "the Lim et al. Poisson bounds (set decoy_estimator = 'analytic')")
    if (link.a, link.b) != (app.a, app.b):
        raise ScenarioError(f"apps[{i}].a: the sender must be the link's 'a' end ({link.a!r}), "
                            f"where its source is")
