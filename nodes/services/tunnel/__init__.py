"""Program tunnels: user programs' TCP connections carried node to node over the links."""
