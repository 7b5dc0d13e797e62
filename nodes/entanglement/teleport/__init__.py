"""The teleport app kind: teleportation over a direct link (spec, shell, result merge)."""
