"""The entanglement.pairs app kind: end-to-end pairs over repeaters (spec, shell, result merge)."""
