"""The qkd.bb84 app kind: prepare-and-measure decoy BB84 (spec, shell, result merge)."""
