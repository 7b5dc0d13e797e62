"""Every physics formula of qnet, once: pure numpy functions with their source and units.

The daemon (ground truth), the nodes (estimation from what they measured) and the
orchestrator (predictions) all import from here; no other module re-derives a formula.
"""
