"""What an operator sees of a running service: /metrics moving by exactly what was
published, traces that continue a sensor's traceparent through to the write, the
readiness detail; and, for a real process, JSON log lines with the expected keys
and no secret in any of them."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families
from support import (
    START_NS,
    Service,
    channel,
    publish,
    publish_series,
    running,
    stored_at_least,
    tone,
    wait_for,
)
from testenv import AMQP_URL, database_url

from soundstream import config
from soundstream.core import wire
from soundstream.errors import MESSAGE_PARTS

pytestmark = pytest.mark.slow

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


async def scrape(service: Service) -> dict[str, float]:
    """Every sample of /metrics, by name and labels: ``name{a="1",b="2"}``."""
    answer = await service.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def publish_malformed(ch: Any, exchange: str) -> dict[str, int]:
    """One message breaking each part of the wire format; the parts, counted."""
    good = wire.encode_pcm(tone(0.1, 16000), "s16le")

    def headers(sensor: str, seq: int = 0) -> dict[str, Any]:
        return wire.headers_for(
            sensor, seq, START_NS, sample_rate=16000, encoding="s16le", channels=1
        )

    await publish(ch, exchange, b"\0" * 70_000, headers("big"))  # over a 64 KB limit
    await publish(ch, exchange, good, {"seq": 0, "start_ns": START_NS}, routing_key="sensor.x")
    await publish(ch, exchange, good, headers("ctype"), content_type="text/plain")
    await publish(ch, exchange, b"\0\0\0", headers("odd"))  # not whole s16le samples
    await publish(ch, exchange, good, headers("rk"), routing_key="sensor.someone-else")
    await publish(ch, exchange, good, headers("mid"), message_id="mid:99")
    return dict.fromkeys(MESSAGE_PARTS, 1)


async def test_metrics_move_by_exactly_what_was_published(
    topology: config.Settings, database: str
) -> None:
    settings = config.replace(topology, max_body_kb=64)
    async with running(settings) as service, channel(settings.amqp_url) as ch:
        before = await scrape(service)
        assert before["soundstream_chunks_consumed_total"] == 0
        await publish_series(ch, settings.audio_exchange, "obs-1", range(4))
        await publish_series(ch, settings.audio_exchange, "obs-2", range(2))
        dead = await publish_malformed(ch, settings.audio_exchange)

        async def settled() -> bool:
            seen = await scrape(service)
            return (
                seen["soundstream_chunks_stored_total"] == 6
                and seen["soundstream_deliveries_held"] == 0
                and sum(
                    seen[f'soundstream_chunks_dead_lettered_total{{reason="{part}"}}']
                    for part in MESSAGE_PARTS
                )
                == len(dead)
            )

        await wait_for(settled, within=30)
        for _ in range(3):
            assert (await service.get("/v1/sensors")).status_code == 200
        assert (await service.get("/v1/sensors/nobody")).status_code == 404
        assert (await service.get("/no/such/path")).status_code == 404

        async def polled() -> bool:
            return "soundstream_broker_queue_consumers" in await scrape(service)

        await wait_for(polled, within=15)
        seen = await scrape(service)
        ready = (await service.get("/readyz")).json()

    conn = await asyncpg.connect(database)
    try:
        frames = await conn.fetchval("SELECT sum(n_frames) FROM chunks")
    finally:
        await conn.close()
    assert seen["soundstream_chunks_consumed_total"] == 6 + len(dead)
    assert seen["soundstream_chunks_redelivered_total"] == 0
    assert seen["soundstream_chunks_stored_total"] == 6
    assert seen["soundstream_frames_stored_total"] == frames
    for part, count in dead.items():
        assert seen[f'soundstream_chunks_dead_lettered_total{{reason="{part}"}}'] == count, part
    assert seen["soundstream_chunks_returned_total"] == 0
    batches = seen["soundstream_batch_write_seconds_count"]
    assert batches >= 1 and seen["soundstream_batch_chunks_count"] == batches
    assert seen["soundstream_batch_chunks_sum"] == 6
    assert seen["soundstream_extraction_seconds_count"] == 6
    assert seen["soundstream_ingest_lag_seconds_count"] == 6
    assert seen["soundstream_held_bytes"] == 0
    assert seen["soundstream_held_bytes_limit"] == settings.max_held_mb * 1024 * 1024
    assert seen["soundstream_pool_workers"] == 1
    assert seen["soundstream_broker_queue_consumers"] == 1
    assert seen["soundstream_broker_queue_messages"] == 0
    assert seen["soundstream_ready"] == 1
    for component in ("broker", "extractor", "database", "process"):
        assert seen[f'soundstream_component_up{{component="{component}"}}'] == 1
        assert ready["checks"][component]["state"] == "up"
    route = 'method="GET",route="/v1/sensors",status="200"'
    assert seen[f"soundstream_http_requests_total{{{route}}}"] == 3
    template = 'method="GET",route="/v1/sensors/{sensor_id}",status="404"'
    assert seen[f"soundstream_http_requests_total{{{template}}}"] == 1
    assert seen['soundstream_http_requests_total{method="GET",route="unmatched",status="404"}'] == 1
    timed = 'method="GET",route="/v1/sensors"'
    assert seen[f"soundstream_http_request_duration_seconds_count{{{timed}}}"] == 3
    assert not [name for name in seen if "obs-1" in name or "/nobody" in name]


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: every span posted, decoded."""

    spans: list[Any]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.server.spans.extend(scope.spans)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def otlp_collector() -> Iterator[tuple[str, list[Any]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.spans = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/traces", server.spans  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


async def test_a_chunk_trace_continues_the_sensor_traceparent_to_the_write(
    topology: config.Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with otlp_collector() as (endpoint, spans):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        settings = config.replace(topology, trace_exporter="otlp")
        async with running(settings) as service, channel(settings.amqp_url) as ch:
            traced = wire.headers_for(
                "tr-1", 0, START_NS, sample_rate=16000, encoding="s16le", channels=1
            )
            traced["traceparent"] = f"00-{TRACE_ID}-{SPAN_ID}-01"
            body = wire.encode_pcm(tone(0.5, 16000), "s16le")
            message_id = wire.message_id("tr-1", 0)
            await publish(ch, settings.audio_exchange, body, traced, message_id=message_id)
            await publish_series(ch, settings.audio_exchange, "tr-2", [0])  # no traceparent
            await wait_for(lambda: stored_at_least(settings.database_url, 2))
            headers = {"traceparent": f"00-{TRACE_ID}-{'1' * 16}-01"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client:
                assert (await client.get("/v1/sensors", headers=headers)).status_code == 200
        # The service stopped: its spans are flushed.
    by_trace: dict[str, list[Any]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id.hex(), []).append(span)
    ours = {span.name: span for span in by_trace[TRACE_ID]}
    assert set(ours) == {"soundstream.chunk", "soundstream.extract", "soundstream.write",
                         "GET /v1/sensors"}  # fmt: skip
    chunk = ours["soundstream.chunk"]
    assert chunk.parent_span_id.hex() == SPAN_ID
    assert chunk.kind == chunk.SPAN_KIND_CONSUMER
    attributes = {a.key: a.value.string_value or a.value.int_value for a in chunk.attributes}
    assert attributes["soundstream.sensor_id"] == "tr-1"
    for step in ("soundstream.extract", "soundstream.write"):
        assert ours[step].parent_span_id == chunk.span_id
        assert chunk.start_time_unix_nano <= ours[step].start_time_unix_nano
        assert ours[step].end_time_unix_nano <= chunk.end_time_unix_nano
    assert ours["GET /v1/sensors"].parent_span_id.hex() == "1" * 16
    others = [trace for trace_id, trace in by_trace.items() if trace_id != TRACE_ID]
    roots = [s for trace in others for s in trace if s.name == "soundstream.chunk"]
    assert len(roots) == 1 and not roots[0].parent_span_id  # tr-2: a trace of its own


# --- a real process: its log lines ---------------------------------------------------

SECRETS = {
    "database password": "pg-Secret-7d1f",
    "api key": "key-Secret-0123456789abcdef",
    "wrong key": "wrong-Secret-fedcba987654",
    "header secret": "hdr-Secret-5a5a",
    "cookie": "cookie-Secret-9b9b",
    "broker password": "amqp-Secret-3c3c",
}


@asynccontextmanager
async def process(env: dict[str, str], log: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "soundstream", "serve"], env=env, stdout=out, stderr=out
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def base_env(settings: config.Settings, port: int) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SOUNDSTREAM_HTTP_HOST": "127.0.0.1",
        "SOUNDSTREAM_HTTP_PORT": str(port),
        "SOUNDSTREAM_AUDIO_EXCHANGE": settings.audio_exchange,
        "SOUNDSTREAM_QUEUE": settings.queue,
        "SOUNDSTREAM_DEAD_EXCHANGE": settings.dead_exchange,
        "SOUNDSTREAM_DEAD_QUEUE": settings.dead_queue,
        "SOUNDSTREAM_WORKERS": "1",
        "SOUNDSTREAM_LOG_FORMAT": "json",
        "SOUNDSTREAM_LOG_LEVEL": "debug",
    }


def lines(log: Path) -> list[dict[str, Any]]:
    """Every line of the process's output, each one JSON."""
    text = log.read_text()
    parsed = []
    for line in text.splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    return parsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_log_lines_are_json_with_ids_and_never_a_secret(
    topology: config.Settings, database: str, tmp_path: Path
) -> None:
    name = database.rsplit("/", 1)[1]
    with_password = database_url(name).replace(
        "postgres@", f"postgres:{SECRETS['database password']}@"
    )
    port = free_port()
    env = base_env(topology, port) | {
        "SOUNDSTREAM_DATABASE_URL": with_password,
        "SOUNDSTREAM_AMQP_URL": AMQP_URL,
        "SOUNDSTREAM_API_KEYS": SECRETS["api key"],
    }
    log = tmp_path / "service.log"
    async with process(env, log), channel(AMQP_URL) as ch:
        base = f"http://127.0.0.1:{port}"

        async def ready() -> bool:
            try:
                async with httpx.AsyncClient(base_url=base) as client:
                    return (await client.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(ready, within=60)
        await publish_series(ch, topology.audio_exchange, "logs-1", range(3))
        await wait_for(lambda: stored_at_least(database, 3))
        async with httpx.AsyncClient(base_url=base) as client:
            good = {"Authorization": f"Bearer {SECRETS['api key']}"}
            assert (await client.get("/v1/sensors", headers=good)).status_code == 200
            bad = {
                "Authorization": f"Bearer {SECRETS['wrong key']}",
                "X-Api-Key": SECRETS["header secret"],
                "Cookie": f"session={SECRETS['cookie']}",
            }
            assert (await client.get("/v1/sensors", headers=bad)).status_code == 401
            answer = await client.get(
                f"/v1/sensors/logs-1/features?start=x&token={SECRETS['api key']}", headers=good
            )
            assert answer.status_code == 400

    # The broker refusing a password: the crash and retry lines must not show it.
    refused = base_env(topology, free_port()) | {
        "SOUNDSTREAM_DATABASE_URL": with_password,
        "SOUNDSTREAM_AMQP_URL": f"amqp://guest:{SECRETS['broker password']}@127.0.0.1:5672/",
        "SOUNDSTREAM_ROLES": "ingest",
    }
    refused_log = tmp_path / "refused.log"
    async with process(refused, refused_log):

        async def crashed() -> bool:
            return "pipeline_crashed" in refused_log.read_text()

        await wait_for(crashed, within=30)

    everything = log.read_text() + refused_log.read_text()
    for what, secret in SECRETS.items():
        assert secret not in everything, f"the {what} reached a log line"
    ours = lines(log)
    lines(refused_log)
    batches = [line for line in ours if line["event"] == "batch_written"]
    assert sum(line["chunks"] for line in batches) == 3
    for line in batches:
        assert {"level", "timestamp", "batch_id", "chunks", "frames", "ms", "lag_s"} <= set(line)
        assert line["level"] == "info"
    requests = {line["status"]: line for line in ours if line["event"] == "http_request"}
    key_id = requests[200]["key_id"]
    assert requests[200]["route"] == "/v1/sensors" and requests[200]["level"] == "info"
    assert isinstance(key_id, str) and len(key_id) == 12
    assert requests[401]["key_id"] is None
    assert requests[400]["route"] == "/v1/sensors/{sensor_id}/features"
    for line in requests.values():
        assert {"method", "route", "status", "ms", "request_id", "timestamp"} <= set(line)
    assert {line["level"] for line in ours} <= {"debug", "info", "warning", "error"}
