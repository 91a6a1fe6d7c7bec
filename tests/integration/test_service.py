"""The service as a process: roles, SIGTERM drain, restart budget, migrate command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import asyncpg
import httpx
import pytest
from support import (
    channel,
    publish_pcm,
    publish_series,
    queue_depth,
    running,
    stored_at_least,
    stored_chunks,
    tcp_proxy,
    tone,
    wait_for,
)
from testenv import PG_ADMIN_URL

from soundstream import config
from soundstream.errors import RestartBudgetExhausted
from soundstream.store.migrate import available
from soundstream.supervisor import serve

pytestmark = pytest.mark.slow


def env_for(s: config.Settings, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SOUNDSTREAM_DATABASE_URL": s.database_url,
        "SOUNDSTREAM_AMQP_URL": s.amqp_url,
        "SOUNDSTREAM_HTTP_HOST": "127.0.0.1",
        "SOUNDSTREAM_AUDIO_EXCHANGE": s.audio_exchange,
        "SOUNDSTREAM_QUEUE": s.queue,
        "SOUNDSTREAM_DEAD_EXCHANGE": s.dead_exchange,
        "SOUNDSTREAM_DEAD_QUEUE": s.dead_queue,
        "SOUNDSTREAM_WORKERS": "1",
        "SOUNDSTREAM_LOG_FORMAT": "json",
    }
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_api_role_needs_no_broker(settings: config.Settings) -> None:
    # An unreachable broker: the api role must not even try it.
    s = config.replace(settings, roles=frozenset({"api"}), amqp_url="amqp://nobody:x@127.0.0.1:1/")
    async with running(s) as service:
        assert (await service.get("/v1/sensors")).json() == {"sensors": [], "next": None}
        assert (await service.get("/healthz")).status_code == 200


async def test_a_slow_query_and_a_full_pool_answer_503_not_a_queue(
    settings: config.Settings,
) -> None:
    s = config.replace(
        settings,
        roles=frozenset({"api"}),
        amqp_url="amqp://nobody:x@127.0.0.1:1/",
        query_timeout_s=1.0,
        pool_timeout_s=0.2,
        db_pool_size=1,
    )
    path = "/v1/sensors/mic-1/features"
    minute = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:01:00Z"}
    locker = await asyncpg.connect(s.database_url)
    try:
        async with running(s) as service:
            # Every read of the frames now waits on this lock.
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE chunk_frames IN ACCESS EXCLUSIVE MODE")
            answers: dict[str, httpx.Response] = {}

            async def slow() -> None:
                answers["slow"] = await service.get(path, **minute)

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                # The only connection is taken by the waiting query: the next request
                # is turned away once its wait for a connection runs out.
                await wait_for(lambda: locker.fetchval(_WAITING))
                started = time.monotonic()
                answers["queued"] = await service.get(path, **minute)
                waited = time.monotonic() - started
            await transaction.rollback()
            # PostgreSQL cancelled the slow one at the statement timeout.
            for answer in answers.values():
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"]
                assert answer.headers["content-type"] == "application/problem+json"
            assert waited < 1.0
            assert (await service.get(path, **minute)).status_code == 200  # the lock is gone
            assert (await service.get("/readyz")).status_code != 500
    finally:
        await locker.close()


_WAITING = """
SELECT count(*) > 0 FROM pg_locks WHERE NOT granted
"""


async def test_ingest_role_serves_health_but_not_features(topology: config.Settings) -> None:
    s = config.replace(topology, roles=frozenset({"ingest"}))
    async with running(s) as service:
        assert (await service.get("/healthz")).status_code == 200
        assert (await service.get("/readyz")).status_code == 200
        assert (await service.get("/v1/sensors")).status_code == 404


async def test_readiness_names_the_unreachable_database(settings: config.Settings) -> None:
    s = config.replace(
        settings, roles=frozenset({"api"}), database_url="postgresql://postgres@127.0.0.1:1/x"
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, s, stop)
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/readyz")
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        stop.set()
    assert answer.status_code == 503
    assert "database" in answer.text


async def test_an_api_replica_on_a_schema_behind_its_code_is_unready(
    settings: config.Settings,
) -> None:
    """Until ``migrate`` has run, an API-only replica (which never opens the ingest
    pool's check) reports why it cannot serve instead of failing reads."""
    latest = available()[-1]
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", latest.version)
        s = config.replace(settings, roles=frozenset({"api"}))
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            port = await tg.start(serve, s, stop)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                answer = await client.get("/readyz")
                assert answer.status_code == 503
                assert f"migrations {latest.version} not applied" in answer.json()["detail"]
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    latest.version,
                    latest.name,
                )

                async def ready() -> bool:
                    return (await client.get("/readyz")).status_code == 200

                await wait_for(ready, within=10)
            stop.set()
    finally:
        await conn.close()


async def test_restart_budget_exhausted_ends_the_process(
    topology: config.Settings, tmp_path: Path
) -> None:
    # A database without the schema: the writer fails at start, every time.
    bare = topology.database_url.rsplit("/", 1)[0] + "/postgres"
    s = config.replace(topology, database_url=bare, max_restarts=1, roles=frozenset({"ingest"}))
    started = time.monotonic()
    with pytest.raises(RestartBudgetExhausted):
        await serve(s)
    assert time.monotonic() - started < 30

    result = subprocess.run(
        [sys.executable, "-m", "soundstream", "serve"],
        env=env_for(
            s, SOUNDSTREAM_MAX_RESTARTS="0", SOUNDSTREAM_ROLES="ingest", SOUNDSTREAM_HTTP_PORT="0"
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "restart_budget_exhausted" in result.stderr
    assert "soundstream migrate" in result.stderr


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda p: p.send_signal(signal.SIGTERM), id="SIGTERM"),
        # Ctrl-C in a terminal: SIGINT to the whole group, pool workers included.
        pytest.param(lambda p: os.killpg(p.pid, signal.SIGINT), id="SIGINT-to-group"),
    ],
)
async def test_signal_mid_stream_drains_and_loses_nothing(
    topology: config.Settings, stop: Callable[[subprocess.Popen[bytes]], None]
) -> None:
    s = topology
    total = 120
    port = free_port()
    env = env_for(s, SOUNDSTREAM_HTTP_PORT=str(port), SOUNDSTREAM_BATCH_MAX_CHUNKS="8")
    process = subprocess.Popen(
        [sys.executable, "-m", "soundstream", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with httpx.AsyncClient() as client:

            async def ready() -> bool:
                try:
                    return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, within=60)
        async with channel(s.amqp_url) as ch:
            await publish_series(ch, s.audio_exchange, "term", range(total))
            await wait_for(lambda: stored_at_least(s.database_url, 5))
            stop(process)
            code = await anyio.to_thread.run_sync(lambda: process.wait(timeout=30))
            output = process.stdout.read().decode() if process.stdout else ""
            assert code == 0, output
            assert "shutdown_requested" in output
            assert "Traceback" not in output and "drain_failed" not in output
            stored = await stored_chunks(s.database_url)
            left = await queue_depth(ch, s.queue)
            # Every chunk is either committed (and acked) or still queued; none is lost.
            assert stored + left >= total
            assert stored < total or left == 0

        # A second replica takes over the rest; every chunk ends up stored exactly once.
        async with running(s):
            await wait_for(lambda: stored_at_least(s.database_url, total), within=60)
        assert await stored_chunks(s.database_url) == total
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


def test_migrate_command_is_idempotent(settings: config.Settings) -> None:
    fresh = settings.database_url + "_cli"
    env = env_for(settings, SOUNDSTREAM_DATABASE_URL=fresh)
    try:
        for expected in (f"{len(available())} migration(s) applied", "0 migration(s) applied"):
            result = subprocess.run(
                [sys.executable, "-m", "soundstream", "migrate"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert expected in result.stdout
    finally:
        anyio.run(_drop, fresh.rsplit("/", 1)[1])


async def _drop(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.mark.parametrize("missing", ["broker", "database"])
async def test_an_unreachable_dependency_is_waited_for_not_fatal(
    settings: config.Settings, missing: str
) -> None:
    # No restart budget at all: waiting for a dependency must not spend any.
    nowhere = {
        "broker": {"amqp_url": "amqp://guest:guest@127.0.0.1:1/"},
        "database": {"database_url": "postgresql://postgres@127.0.0.1:1/x"},
    }[missing]
    s = config.replace(settings, roles=frozenset({"ingest"}), max_restarts=0, **nowhere)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, s, stop)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def failed_to_reach() -> bool:
                answer = await client.get("/readyz")
                return answer.status_code == 503 and "unreachable" in answer.json()["detail"]

            # A failed attempt is reported; with no restart budget a crash would have
            # ended ``serve`` by now, yet it goes on answering and retrying.
            await wait_for(failed_to_reach, within=20)
            await wait_for(failed_to_reach, within=20)
            answer = await client.get("/readyz")
            assert (await client.get("/healthz")).status_code == 200
        stop.set()
    assert answer.status_code == 503
    assert missing in answer.json()["detail"]


async def test_the_api_answers_while_the_broker_is_away(settings: config.Settings) -> None:
    s = config.replace(settings, amqp_url="amqp://guest:guest@127.0.0.1:1/", max_restarts=0)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        port = await tg.start(serve, s, stop)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/v1/sensors")).status_code == 200
            assert "broker" in (await client.get("/readyz")).json()["detail"]
        stop.set()


@pytest.mark.parametrize("late", ["broker", "database"])
async def test_a_dependency_that_comes_up_late_is_picked_up(
    topology: config.Settings, late: str
) -> None:
    port = free_port()
    if late == "broker":
        s = config.replace(
            topology, amqp_url=f"amqp://guest:guest@127.0.0.1:{port}/", max_restarts=0
        )
        target = 5672
    else:
        s = config.replace(
            topology, database_url=_with_port(topology.database_url, port), max_restarts=0
        )
        target = 5432
    s = config.replace(s, roles=frozenset({"ingest"}))
    stop = anyio.Event()
    async with anyio.create_task_group() as proxies:
        async with anyio.create_task_group() as tg:
            http = await tg.start(serve, s, stop)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http}") as client:

                async def failed_to_reach() -> bool:
                    answer = await client.get("/readyz")
                    return answer.status_code == 503 and "unreachable" in answer.json()["detail"]

                await wait_for(failed_to_reach, within=20)
                await proxies.start(tcp_proxy, port, target)

                async def ready() -> bool:
                    return (await client.get("/readyz")).status_code == 200

                await wait_for(ready, within=40)
            async with channel(topology.amqp_url) as ch:
                await publish_pcm(ch, s.audio_exchange, "late", 0, tone(0.5, 16000), 16000)
            await wait_for(lambda: stored_at_least(topology.database_url, 1), within=20)
            stop.set()
        proxies.cancel_scope.cancel()


def _with_port(url: str, port: int) -> str:
    return url.replace(":5432/", f":{port}/")
