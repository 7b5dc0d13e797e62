"""Network layer of a node: link-state routing, forwarding, reliable streams, hybrid headers.

Each module is a sans-I/O core (messages and ``now`` in, messages out); the trio shells that
put them on sockets live with the node runtime. See docs/net.md.
"""
