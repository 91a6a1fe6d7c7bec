"""The process's Prometheus metrics: one registry, made by the supervisor and handed
to the actors and the HTTP app; nothing global.

prometheus-client writes the text exposition format Prometheus and promtool read,
with histograms whose buckets we choose; counters and histograms are updated where
things happen, gauges of live state (deliveries held, workers busy) are read at
scrape time. No label takes unbounded values: no sensor ids, routes as templates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from soundstream.errors import MESSAGE_PARTS
from soundstream.status import UP, Status

# The text format every Prometheus reads (our names need none of 1.0.0's quoting).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "soundstream_"

# Seconds: a task in the pool, a batch commit, an HTTP answer.
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds from a chunk's first sample to its commit: live sensors land in the first
# buckets, a backlog being drained in the last.
_LAG = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)

RESTART_CAUSES = ("broker_unavailable", "database_unavailable", "message", "crash")
LIVE_DROP_REASONS = ("behind", "stalled")


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # Ingest: what came in and where it went.
        self.chunks_consumed = Counter(
            "soundstream_chunks_consumed",
            "Deliveries received from the queue, redeliveries included.",
            registry=r,
        )
        self.chunks_redelivered = Counter(
            "soundstream_chunks_redelivered",
            "Deliveries the broker marked as redelivered.",
            registry=r,
        )
        self.chunks_stored = Counter(
            "soundstream_chunks_stored",
            "Chunks committed for the first time (a redelivered chunk already stored "
            "is acked without counting).",
            registry=r,
        )
        self.chunks_dead_lettered = Counter(
            "soundstream_chunks_dead_lettered",
            "Malformed messages copied to the dead-letter exchange, by the part that broke "
            "the wire format.",
            ["reason"],
            registry=r,
        )
        self.chunks_returned = Counter(
            "soundstream_chunks_returned",
            "Chunks returned to the queue because extraction failed even alone "
            "(the broker dead-letters one at the delivery limit).",
            registry=r,
        )
        self.frames_stored = Counter(
            "soundstream_frames_stored", "Feature frames committed.", registry=r
        )
        self.extraction_seconds = Histogram(
            "soundstream_extraction_seconds",
            "Time in the extraction pool per chunk: a task's round trip divided by its chunks.",
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_write_seconds = Histogram(
            "soundstream_batch_write_seconds",
            "Time to commit one write batch, retries included.",
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_chunks = Histogram(
            "soundstream_batch_chunks", "Chunks per write batch.", buckets=_BATCH, registry=r
        )
        self.ingest_lag_seconds = Histogram(
            "soundstream_ingest_lag_seconds",
            "Commit time minus the chunk's first sample time (the sensor's clock; "
            "a chunk stamped in the future counts as 0).",
            buckets=_LAG,
            registry=r,
        )
        self.reconnects = Counter(
            "soundstream_reconnects",
            "Connections opened again after one was lost or refused, by dependency.",
            ["dependency"],
            registry=r,
        )
        self.pipeline_restarts = Counter(
            "soundstream_pipeline_restarts",
            "Restarts of the ingest pipeline, by cause.",
            ["cause"],
            registry=r,
        )
        self.deliveries_held = Gauge(
            "soundstream_deliveries_held",
            "Deliveries received and not yet settled (acked, returned or dead-lettered).",
            registry=r,
        )
        self.bytes_held = Gauge(
            "soundstream_held_bytes", "Bodies of the deliveries held, in bytes.", registry=r
        )
        self.bytes_held_limit = Gauge(
            "soundstream_held_bytes_limit",
            "The most the replica may hold (SOUNDSTREAM_MAX_HELD_MB), in bytes.",
            registry=r,
        )
        self.prefetch = Gauge(
            "soundstream_prefetch",
            "The AMQP prefetch consumed with (1 while cautious).",
            registry=r,
        )
        self.pool_workers = Gauge(
            "soundstream_pool_workers", "Extraction worker processes.", registry=r
        )
        self.pool_workers_busy = Gauge(
            "soundstream_pool_workers_busy", "Extraction workers holding a task.", registry=r
        )
        self.pool_workers_replaced = Gauge(
            "soundstream_pool_workers_replaced",
            "Extraction workers replaced after dying, since start.",
            registry=r,
        )
        # The broker's view of the queue, as last polled: absent until an ingest
        # replica polls (an API replica has no broker to ask).
        self.queue: QueueState | None = None
        r.register(_Queue(self))
        # HTTP.
        self.http_requests = Counter(
            "soundstream_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "soundstream_http_request_duration_seconds",
            "Time from a request's arrival to its last byte sent, by method and route template.",
            ["method", "route"],
            buckets=_LATENCY,
            registry=r,
        )
        # Live streams (Server-Sent Events of committed chunks).
        self.live_streams = Gauge(
            "soundstream_live_streams",
            "Live feature streams open (SOUNDSTREAM_MAX_LIVE_STREAMS bounds them).",
            registry=r,
        )
        self.live_clients_dropped = Counter(
            "soundstream_live_clients_dropped",
            "Live streams ended because the client read too slowly: it fell more than "
            "SOUNDSTREAM_LIVE_REPLAY_CHUNKS behind (behind), or took no event for "
            "SOUNDSTREAM_LIVE_SEND_TIMEOUT_S (stalled).",
            ["reason"],
            registry=r,
        )
        for reason in LIVE_DROP_REASONS:
            self.live_clients_dropped.labels(reason)
        for reason in MESSAGE_PARTS:
            self.chunks_dead_lettered.labels(reason)
        for cause in RESTART_CAUSES:
            self.pipeline_restarts.labels(cause)
        for dependency in ("broker", "database"):
            self.reconnects.labels(dependency)

    def watch(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Read ``gauge`` from ``read`` at every scrape."""
        gauge.set_function(read)

    def watch_status(self, status: Status) -> None:
        """Readiness and each component's state, read from ``status`` at every scrape."""
        self.registry.register(_Readiness(status))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True, slots=True)
class QueueState:
    messages: int
    consumers: int


class _Queue(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        queue = self._metrics.queue
        if queue is None:
            return
        messages = GaugeMetricFamily(
            "soundstream_broker_queue_messages",
            "Messages ready in the queue, as the broker last reported (polled).",
        )
        messages.add_metric([], float(queue.messages))
        yield messages
        consumers = GaugeMetricFamily(
            "soundstream_broker_queue_consumers",
            "Consumers on the queue, as the broker last reported (polled).",
        )
        consumers.add_metric([], float(queue.consumers))
        yield consumers


class _Readiness(Collector):
    def __init__(self, status: Status) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "soundstream_ready", "1 when every actor and dependency is up, else 0."
        )
        ready.add_metric([], float(self._status.ready()))
        yield ready
        up = GaugeMetricFamily(
            "soundstream_component_up",
            "1 when the actor or dependency is up, by component.",
            labels=["component"],
        )
        for name, check in self._status.checks().items():
            up.add_metric([name], float(check.state == UP))
        yield up
        changes = CounterMetricFamily(
            "soundstream_readiness_changes",
            "Changes of readiness, from ready to not ready or back.",
        )
        changes.add_metric([], float(self._status.changes))
        yield changes
