"""The qkd.bbm92 app kind: entanglement-based QKD (spec, shell, result merge)."""
