"""``qnet run --netns``: every node in its own network namespace, every link a shaped wire.

``plan`` (addresses, interfaces, static routes; pure), ``kernel`` (unshare/setns, TAPs,
``ip``), ``holder`` (a node's namespace process), ``shaper`` (a link's wire process),
``routes`` (routing table -> kernel routes), ``setup`` (what the orchestrator starts).
Docs: docs/netns.md.
"""
