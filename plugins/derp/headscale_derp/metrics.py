"""Relay and STUN counters, exported under derper's metric names.

The hot path bumps plain integers (a prometheus ``Counter.inc`` takes a lock, and a relayed
packet touches four counters); a custom collector turns them into metric families when the
registry is scraped. Names mirror derper's ``/debug/varz`` so dashboards work for both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

DROP_REASONS = (
    "unknown_dest",
    "unknown_dest_on_fwd",
    "gone_disconnected",
    "queue_head",
    "queue_tail",
    "write_error",
    "dup_client",
)


@dataclass
class RelayStats:
    accepts: int = 0
    rejected: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    packets_received_disco: int = 0
    packets_sent: int = 0
    bytes_sent: int = 0
    packets_forwarded_out: int = 0
    packets_forwarded_in: int = 0
    peer_gone_disconnected_frames: int = 0
    peer_gone_not_here_frames: int = 0
    got_ping: int = 0
    sent_pong: int = 0
    write_timeouts: int = 0
    protocol_errors: int = 0
    throttled: int = 0
    total_dup_client_conns: int = 0
    home_moves_in: int = 0
    home_moves_out: int = 0
    packets_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    bytes_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)

    def drop(self, reason: str, disco: bool, size: int) -> None:
        key = (reason, "disco" if disco else "other")
        self.packets_dropped[key] += 1
        self.bytes_dropped[key] += size


@dataclass
class StunStats:
    requests: Counter[str] = field(default_factory=Counter)
    families: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Gauges:
    current_connections: int
    current_home_connections: int
    current_notideal_connections: int
    clients_total: int
    clients_local: int
    clients_remote: int
    current_dup_client_keys: int
    current_dup_client_conns: int
    watchers: int


class RelayCollector(Collector):
    """Reads ``RelayStats``, live gauges and STUN counters at scrape time."""

    def __init__(self, stats: RelayStats, gauges: Callable[[], Gauges], stun: StunStats) -> None:
        self._stats = stats
        self._gauges = gauges
        self._stun = stun

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        counters = {
            "derp_accepts": (s.accepts, "handshakes started"),
            "derp_rejected_clients": (s.rejected, "clients refused by admission"),
            "derp_packets_received": (s.packets_received, "SendPacket frames accepted"),
            "derp_bytes_received": (s.bytes_received, "SendPacket payload bytes accepted"),
            "derp_packets_sent": (s.packets_sent, "RecvPacket frames written"),
            "derp_bytes_sent": (s.bytes_sent, "RecvPacket payload bytes written"),
            "derp_packets_forwarded_out": (s.packets_forwarded_out, "packets sent to mesh peers"),
            "derp_packets_forwarded_in": (s.packets_forwarded_in, "packets received from mesh peers"),
            "derp_peer_gone_disconnected_frames": (s.peer_gone_disconnected_frames, "PeerGone(0) sent"),
            "derp_peer_gone_not_here_frames": (s.peer_gone_not_here_frames, "PeerGone(1) sent"),
            "derp_got_ping": (s.got_ping, "Ping frames received"),
            "derp_sent_pong": (s.sent_pong, "Pong frames sent"),
            "derp_sclient_write_timeouts": (s.write_timeouts, "connections closed on write timeout"),
            "derp_protocol_errors": (s.protocol_errors, "connections closed for breaking the protocol"),
            "derp_throttled_clients": (s.throttled, "times a client was throttled for flooding"),
            "derp_total_dup_client_conns": (s.total_dup_client_conns, "duplicate connections accepted"),
            "derp_home_moves_in": (s.home_moves_in, "NotePreferred(1) after connect"),
            "derp_home_moves_out": (s.home_moves_out, "NotePreferred(0) after connect"),
        }
        for name, (value, doc) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
        kinds = CounterMetricFamily("derp_packets_received_kind", "accepted packets by kind", labels=["kind"])
        kinds.add_metric(["disco"], s.packets_received_disco)
        kinds.add_metric(["other"], s.packets_received - s.packets_received_disco)
        yield kinds
        for name, table in (
            ("derp_packets_dropped", s.packets_dropped),
            ("derp_bytes_dropped", s.bytes_dropped),
        ):
            family = CounterMetricFamily(name, "dropped packets by reason", labels=["reason", "kind"])
            for reason in DROP_REASONS:
                for kind in ("disco", "other"):
                    family.add_metric([reason, kind], table[(reason, kind)])
            yield family
        for field_name, value in vars(self._gauges()).items():
            yield GaugeMetricFamily(f"derp_{field_name}", field_name.replace("_", " "), value=value)
        requests = CounterMetricFamily("stun_requests", "STUN packets by disposition", labels=["disposition"])
        for disposition in ("success", "not_stun", "write_error"):
            requests.add_metric([disposition], self._stun.requests[disposition])
        yield requests
        families = CounterMetricFamily("stun_addrfamily", "STUN answers by address family", labels=["family"])
        for family_name in ("ipv4", "ipv6"):
            families.add_metric([family_name], self._stun.families[family_name])
        yield families


def register(
    registry: CollectorRegistry | None, stats: RelayStats, gauges: Callable[[], Gauges], stun: StunStats
) -> RelayCollector | None:
    """Register the collector on ``registry``; None means do not export (tests, benchmarks)."""
    if registry is None:
        return None
    collector = RelayCollector(stats, gauges, stun)
    registry.register(collector)
    return collector
