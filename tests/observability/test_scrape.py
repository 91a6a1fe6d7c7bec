"""A real ``soundstream serve`` (both roles) after traffic: every metric the dashboard
and the alert rules reference is on its /metrics, and a real Prometheus scrapes it,
loads the rules, and answers every dashboard query.

One service for the module: ``soundstream simulate`` publishes a few chunks, one
malformed message per part of the wire format is published beside them, a few HTTP
requests are made, and /metrics is polled until the counters show all of it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx
import numpy as np
import pytest
import pytest_asyncio
from monitoring import (
    ALERTS,
    Prometheus,
    alert_rules,
    dashboard,
    dashboard_queries,
    families,
    references,
    tool,
)
from replicas import Replica, free_port, wait_until
from support import START_NS, channel, publish, tone
from testenv import AMQP_URL, PG_ADMIN_URL, database_url, delete_topology, unique

from soundstream.core import wire
from soundstream.errors import MESSAGE_PARTS
from soundstream.store.migrate import migrate

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

MAX_BODY_KB = 64  # so that an oversized body is small to publish
# Two sensors, four half-second chunks each, timed now (live traffic: small lags).
SIMULATE = ("simulate", "--sensors", "2", "--seconds", "2", "--chunk-ms", "500")
SIMULATE += ("--sensor-prefix", "observed")


@dataclass
class Service:
    """The running service and what was sent to it."""

    replica: Replica
    env: dict[str, str]
    stored: int  # chunks published by `soundstream simulate`, all committed
    dead: dict[str, int]  # malformed messages published, by part of the message

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.replica.port}"

    async def scrape(self) -> str:
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.get(f"{self.url}/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        return answer.text


def _headers(sensor: str, **changes: Any) -> dict[str, Any]:
    headers: dict[str, Any] = wire.headers_for(
        sensor, 0, START_NS, sample_rate=16000, encoding="s16le", channels=1
    )
    headers.update(changes)
    return {name: value for name, value in headers.items() if value is not None}


def malformed() -> dict[str, dict[str, Any]]:
    """One message that breaks each part of the wire format (MESSAGE_PARTS), as
    keyword arguments of ``support.publish``."""
    good = wire.encode_pcm(tone(0.5, 16000), "s16le")
    nan = np.full(1024, np.nan, dtype="<f4").tobytes()
    return {
        "body": {"body": bytes(MAX_BODY_KB * 1024 + 2), "headers": _headers("dead-body")},
        "headers": {"body": good, "headers": _headers("dead-headers", seq=None)},
        "content_type": {
            "body": good,
            "headers": _headers("dead-type"),
            "content_type": "text/plain",
        },
        "audio": {"body": nan, "headers": _headers("dead-audio", encoding="f32le")},
        "routing_key": {
            "body": good,
            "headers": _headers("dead-key"),
            "routing_key": "sensor.somebody-else",
        },
        "message_id": {"body": good, "headers": _headers("dead-id"), "message_id": "dead-id:7"},
    }


async def publish_malformed(env: dict[str, str], parts: list[str]) -> None:
    messages = malformed()
    async with channel(env["SOUNDSTREAM_AMQP_URL"]) as ch:
        for part in parts:
            message = messages[part]
            sensor = message["headers"]["sensor_id"]
            message.setdefault("message_id", wire.message_id(sensor, 0))
            await publish(ch, env["SOUNDSTREAM_AUDIO_EXCHANGE"], **message)


def _value(scraped: dict[str, Any], sample_name: str, **labels: str) -> float:
    family = scraped.get(sample_name)
    if family is None:
        return 0.0
    return sum(
        s.value
        for s in family.samples
        if s.name == sample_name and labels.items() <= s.labels.items()
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    name = unique("soundstream_test")
    await migrate(database_url(name))
    tag = unique("t")
    names = {
        "audio_exchange": f"{tag}.audio",
        "queue": f"{tag}.features",
        "dead_exchange": f"{tag}.dead",
        "dead_queue": f"{tag}.dead",
    }
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SOUNDSTREAM_DATABASE_URL": database_url(name),
        "SOUNDSTREAM_AMQP_URL": AMQP_URL,
        "SOUNDSTREAM_HTTP_HOST": "127.0.0.1",
        "SOUNDSTREAM_HTTP_PORT": str(free_port()),
        "SOUNDSTREAM_ROLES": "ingest,api",
        "SOUNDSTREAM_WORKERS": "1",
        "SOUNDSTREAM_BATCH_MAX_WAIT_MS": "50",
        "SOUNDSTREAM_MAX_BODY_KB": str(MAX_BODY_KB),
        "SOUNDSTREAM_LOG_FORMAT": "json",
        **{f"SOUNDSTREAM_{key.upper()}": value for key, value in names.items()},
    }
    replica = Replica("observed", env, tmp_path_factory.mktemp("service") / "serve.log")
    try:
        await replica.wait_ready(within=60)
        simulated = await anyio.run_process(
            [sys.executable, "-m", "soundstream", *SIMULATE],
            env=env,
            check=False,
        )
        assert simulated.returncode == 0, simulated.stderr.decode()
        found = re.search(r"published (\d+) chunks", simulated.stdout.decode())
        assert found, simulated.stdout.decode()
        service = Service(replica, env, int(found.group(1)), dict.fromkeys(MESSAGE_PARTS, 1))
        await publish_malformed(env, list(MESSAGE_PARTS))
        await requests(service)

        async def settled() -> bool:
            scraped = families(await service.scrape())
            return (
                _value(scraped, "soundstream_chunks_stored_total") == service.stored
                and all(
                    _value(scraped, "soundstream_chunks_dead_lettered_total", reason=part) == n
                    for part, n in service.dead.items()
                )
                and "soundstream_broker_queue_consumers" in scraped
            )

        await wait_until(
            settled,
            within=30,
            what=f"{service.stored} chunks stored and {service.dead} dead-lettered on /metrics",
            describe=service.scrape,
        )
        yield service
    finally:
        replica.terminate()
        try:
            await replica.wait_exit(within=30)
        finally:
            replica.close()
            await delete_topology(AMQP_URL, names)
            admin = await asyncpg.connect(PG_ADMIN_URL)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


async def requests(service: Service) -> None:
    """A few answers of every kind: found, listed, not found, a bad parameter."""
    now = datetime.now(UTC)
    window = {
        "start": (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
        "end": (now + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
    }
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200

        async def listed() -> bool:
            answer = await client.get("/v1/sensors")
            return len(answer.json()["sensors"]) == 2

        await wait_until(listed, within=30, what="both simulated sensors listed")
        sensor = "observed-000"
        assert (await client.get(f"/v1/sensors/{sensor}")).status_code == 200
        features = await client.get(f"/v1/sensors/{sensor}/features", params=window)
        assert features.status_code == 200
        assert features.json()["frames"]
        assert (await client.get("/v1/sensors/nobody")).status_code == 404
        bad = await client.get(f"/v1/sensors/{sensor}/features", params={**window, "fields": "x"})
        assert bad.status_code == 400


async def test_every_referenced_metric_is_exposed(service: Service) -> None:
    assert set(malformed()) == set(MESSAGE_PARTS), "one malformed message per part"
    scraped = families(await service.scrape())
    referenced = references()
    assert referenced, "the dashboard and the rules reference metrics"
    missing = {name: where for name, where in referenced.items() if name not in scraped}
    assert missing == {}, "referenced but not on /metrics"
    # A bucket is a histogram's; a sum or count a histogram's or a summary's.
    for name, where in referenced.items():
        if name.endswith("_bucket"):
            assert scraped[name].type == "histogram", (name, where)
        elif name.endswith(("_sum", "_count")):
            assert scraped[name].type in {"histogram", "summary"}, (name, where)
    # What the traffic was meant to show is there, with the labels the panels use.
    assert _value(scraped, "soundstream_frames_stored_total") > 0
    assert _value(scraped, "soundstream_ingest_lag_seconds_count") == service.stored
    assert _value(scraped, "soundstream_ready") == 1
    routes = {
        (s.labels["route"], s.labels["status"])
        for s in scraped["soundstream_http_requests_total"].samples
        if s.name == "soundstream_http_requests_total"
    }
    assert {
        ("/v1/sensors", "200"),
        ("/v1/sensors/{sensor_id}", "404"),
        ("/v1/sensors/{sensor_id}/features", "400"),
    } <= routes


def _instant(expr: str) -> str:
    """A dashboard query as Grafana would send it, every variable at "All"."""
    for variable, value in {
        "$__rate_interval": "1m",
        "$__range": "5m",
        "$namespace": ".*",
        "$instance": ".*",
    }.items():
        expr = expr.replace(variable, value)
    return expr


async def test_a_real_prometheus_scrapes_the_service_and_loads_the_rules(
    service: Service, tmp_path: Path
) -> None:
    prometheus = Prometheus(
        tool("prometheus"), tmp_path, free_port(), f"127.0.0.1:{service.replica.port}", ALERTS
    )
    try:
        await wait_until(prometheus.ready, within=30, what="prometheus ready")

        async def target_up() -> list[dict[str, Any]]:
            targets = (await prometheus.get("/api/v1/targets"))["activeTargets"]
            return targets if [t["health"] for t in targets] == ["up"] else []

        await wait_until(
            target_up, within=20, what="the service's target up", describe=prometheus.output
        )

        async def stored() -> list[dict[str, Any]]:
            data = await prometheus.get("/api/v1/query", query="soundstream_chunks_stored_total")
            found = data["result"]
            return found if [float(r["value"][1]) for r in found] == [service.stored] else []

        await wait_until(
            stored, within=20, what=f"soundstream_chunks_stored_total {service.stored}"
        )

        async def rules_ok() -> dict[str, str]:
            groups = (await prometheus.get("/api/v1/rules"))["groups"]
            health = {rule["name"]: rule["health"] for g in groups for rule in g["rules"]}
            return health if set(health.values()) == {"ok"} else {}

        health = await wait_until(rules_ok, within=20, what="every rule evaluated")
        assert set(health) == set(alert_rules())

        # Every panel's query parses and finds series once two scrapes are in (the
        # variables' label_values() is Grafana's, not PromQL: asked as Grafana does).
        queries = {
            where: _instant(expr)
            for where, expr in dashboard_queries(dashboard()).items()
            if where.startswith("panel ")
        }
        instances = await prometheus.get(
            "/api/v1/label/instance/values", **{"match[]": "soundstream_ready"}
        )
        assert instances == [f"127.0.0.1:{service.replica.port}"]

        unanswered = dict(queries)

        async def all_answered() -> bool:
            for where, expr in list(unanswered.items()):
                if (await prometheus.get("/api/v1/query", query=expr))["result"]:
                    del unanswered[where]
            return not unanswered

        await wait_until(
            all_answered,
            within=20,
            what=f"series for all {len(queries)} dashboard queries",
            describe=lambda: f"none yet for {unanswered}",
        )

        # A malformed message now: the dead-letter alert goes pending on its reason.
        await publish_malformed(service.env, ["headers"])
        service.dead["headers"] += 1

        async def pending() -> list[dict[str, Any]]:
            alerts = (await prometheus.get("/api/v1/alerts"))["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "SoundstreamDeadLettering"]

        (alert,) = await wait_until(pending, within=20, what="SoundstreamDeadLettering pending")
        assert alert["state"] == "pending"
        assert alert["labels"]["reason"] == "headers"
        assert alert["labels"]["severity"] == "warning"
    finally:
        prometheus.stop()
