"""Network layer of a node: link-state routing, forwarding, reliable streams, hybrid headers.

Each module is a sans-I/O core (messages and ``now`` in, messages out); the trio shells that
put them on sockets live with the node runtime. See docs/net.md.
"""

from nodes.net.forwarding import Deliver, Drop, Forward, Forwarder, HeaderForwarder
from nodes.net.header import (
    HeaderAuthenticationError,
    HeaderCodec,
    HybridHeader,
    MalformedHeader,
    PayloadDescriptor,
    PolarisationReference,
)
from nodes.net.linkstate import (
    LinkConfig,
    LinkStateRouter,
    Metric,
    NeighbourDown,
    NeighbourUp,
    Route,
    RoutesChanged,
    RoutingConfig,
    Send,
    shortest_paths,
)
from nodes.net.stream import StreamConfig, StreamReceiver, StreamSender

__all__ = [
    "Deliver", "Drop", "Forward", "Forwarder", "HeaderAuthenticationError", "HeaderCodec",
    "HeaderForwarder", "HybridHeader", "LinkConfig", "LinkStateRouter", "MalformedHeader",
    "Metric", "NeighbourDown", "NeighbourUp", "PayloadDescriptor", "PolarisationReference",
    "Route", "RoutesChanged", "RoutingConfig", "Send", "StreamConfig", "StreamReceiver",
    "StreamSender", "shortest_paths",
]
