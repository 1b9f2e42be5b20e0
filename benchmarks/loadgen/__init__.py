"""A load generator of simulated Tailscale nodes speaking the real ts2021 control protocol."""

from benchmarks.loadgen.fleet import Fleet, Watch
from benchmarks.loadgen.node import SimNode
from benchmarks.loadgen.peertable import Peer, PeerTable

__all__ = ["Fleet", "Peer", "PeerTable", "SimNode", "Watch"]
