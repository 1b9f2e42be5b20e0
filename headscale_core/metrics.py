"""Prometheus metrics, on a registry owned by the app (never the global default)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.node_count = Gauge("headscale_node_count", "Registered nodes", registry=registry)
        self.node_connected = Gauge("headscale_node_connected", "Nodes with an open map stream", registry=registry)
        self.map_streams = Gauge("headscale_map_streams", "Open map streams", registry=registry)
        self.map_messages = Counter("headscale_map_messages_total", "Map messages encoded, by kind",
                                    ["kind"], registry=registry)
        self.map_bytes = Counter("headscale_map_bytes_total", "Bytes of map messages encoded, by kind",
                                 ["kind"], registry=registry)
        self.batch_seconds = Histogram("headscale_change_batch_duration_seconds",
                                       "Time to fan out one batch of changes", registry=registry,
                                       buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1))
        self.propagation_seconds = Histogram(
            "headscale_change_propagation_seconds",
            "From a change being emitted to its map message being queued to the last session it concerns",
            registry=registry, buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
        self.registrations = Counter("headscale_registrations_total", "Registration requests by method and result",
                                     ["method", "result"], registry=registry)
        self.api_requests = Counter("headscale_api_requests_total", "REST API requests",
                                    ["method", "path", "status"], registry=registry)
        self.api_duration = Histogram("headscale_api_request_duration_seconds", "REST API request duration",
                                      ["method", "path"], registry=registry)
        self.db_duration = Histogram("headscale_db_query_duration_seconds", "Database transaction duration",
                                     registry=registry)

    def map_message(self, kind: str, size: int) -> None:
        self.map_messages.labels(kind).inc()
        self.map_bytes.labels(kind).inc(size)

    def batch_done(self, seconds: float) -> None:
        self.batch_seconds.observe(seconds)

    def change_propagated(self, seconds: float) -> None:
        self.propagation_seconds.observe(seconds)

    def registration(self, method: str, result: str) -> None:
        self.registrations.labels(method, result).inc()

    def api_request(self, method: str, path: str, status: int, seconds: float | None) -> None:
        """One REST call; ``seconds`` is None for a streamed response (its length is the client's)."""
        self.api_requests.labels(method, path, str(status)).inc()
        if seconds is not None:
            self.api_duration.labels(method, path).observe(seconds)

    def stream_opened(self) -> None:
        self.map_streams.inc()

    def stream_closed(self) -> None:
        self.map_streams.dec()
