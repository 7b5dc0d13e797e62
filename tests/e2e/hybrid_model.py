"""A ``hybrid`` entry of result.json against its model (``emulator.hybrid_config.flow_mixture``):
the shared checks of the hybrid e2e tests (qchip-campus, quanet-failover, mesh-16)."""

from __future__ import annotations

import math


def check_flow(flow: dict, min_sent: int = 60) -> None:
    """The counts add up, no router measured, and no router's latency sample above its
    budget was a switch set in time (the model's late share counts those samples); delivered,
    lost in fibre and late each within 4 binomial SE of the model (the SE of a mixture of
    segments, sqrt(sum_i n_i p_i (1 - p_i))/n, from the model) plus its ``ambiguous``
    packets (sent near a cut's edge or a reroute: either fate is possible), late + 1 (its
    share comes from the routers' own latency samples); what the destination never heard of
    (``unseen``) is the model's lost-on-cut count within the ambiguous packets and the
    headers the nodes on the paths counted as dropped; the fidelity within 4 SE of the
    mixture's (pairs matched in every basis: ``unestimated``)."""
    sent, model = flow["sent"], flow["model"]
    assert sent >= min_sent, flow
    assert flow["router_measurements"] == 0, flow
    for router in flow["routers"]:  # a sample above the budget is a switch the daemon refused
        assert router["over_budget"] <= router["late"], router
    assert flow["delivered"] + flow["lost_in_fibre"] + flow["late"] + flow["unseen"] == sent
    ambiguous = model["ambiguous"]
    for key, slack in (("delivered", 0), ("lost_in_fibre", 0), ("late", 1)):
        bound = 4 * model[f"{key}_se"] * sent + ambiguous + slack
        assert abs(flow[key] - model[key] * sent) <= bound, (key, flow)
    assert abs(flow["unseen"] - model["lost_on_cut"] * sent) <= \
        ambiguous + flow["dropped_header"], flow
    if unestimated(flow):
        return
    # binomial SE at the model (the estimate's own is 0 when every match agreed): each basis
    # correlator is +-lambda, lambda = (4 F - 1)/3, Var = (1 - lambda^2)/n_b; F = (1 + sum)/4;
    # plus the model's run-to-run spread over the send times
    lam = (4 * flow["fidelity_model"] - 1) / 3
    binomial = math.sqrt(sum((1 - lam**2) / n for n in flow["matched_per_basis"])) / 4
    se = math.hypot(binomial, flow["fidelity_model_spread"])
    assert abs(flow["fidelity_mean"] - flow["fidelity_model"]) < 4 * se, flow
    assert flow["fidelity_mean"] == flow["fidelity_mean_src"]  # both ends, same records


def unestimated(flow: dict) -> bool:
    """A pair flow whose destination matched no pair in some basis has no estimate: allowed
    only with few matched at all (each match falls in one of three bases: with 30, all three
    have one but for a chance of 3 (2/3)^30 = 2e-5); under load few are delivered."""
    if flow["fidelity_mean"] is not None:
        assert min(flow["matched_per_basis"]) > 0, flow
        return False
    assert flow["matched"] < 30, flow
    return True


def segments(flow: dict) -> list[list[str]]:
    """The paths the sender's route took, in order."""
    return [path for _, path in flow["paths"]]
