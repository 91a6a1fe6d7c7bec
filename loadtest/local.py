"""A soundstream service of the run's own, as the tests isolate theirs: a new database
(``soundstream migrate`` makes it), exchange and queue names no one else uses, a free
port and an API key of its own. All of it is removed afterwards.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiormq
import anyio
import asyncpg
from anyio.abc import Process

READY_TIMEOUT_S = 90.0  # workers start and warm up before the service is ready
STOP_TIMEOUT_S = 40.0  # the service's drain limit (20 s by default), and then some
CLEANUP_TIMEOUT_S = 30.0


class SetupError(Exception):
    """The run could not be set up; the message says what failed."""


@dataclass(frozen=True)
class Target:
    """What the Locust users load, and how to check what was stored."""

    host: str
    amqp_url: str
    exchange: str
    api_key: str
    database_url: str | None = None  # known for a local service only


@dataclass
class Service:
    target: Target
    process: Process
    log: Path
    exit_code: int | None = None  # once stopped


@asynccontextmanager
async def local_service(
    *, admin_url: str, amqp_url: str, settings: Mapping[str, str], run_id: str, out: Path
) -> AsyncIterator[Service]:
    """``soundstream serve`` (ingest and api) on 127.0.0.1, ready; stopped with SIGTERM
    (a drain) on exit, then its database and AMQP names are deleted."""
    tag = f"loadtest_{run_id}"
    database = f"soundstream_{tag}"
    names = {
        "SOUNDSTREAM_AUDIO_EXCHANGE": f"{tag}.audio",
        "SOUNDSTREAM_QUEUE": f"{tag}.features",
        "SOUNDSTREAM_DEAD_EXCHANGE": f"{tag}.dead",
        "SOUNDSTREAM_DEAD_QUEUE": f"{tag}.dead",
    }
    database_url = f"{admin_url.rpartition('/')[0]}/{database}"
    port, key = _free_port(), secrets.token_hex(16)
    env = {name: value for name, value in os.environ.items() if not name.startswith("SOUNDSTREAM_")}
    env.update(
        SOUNDSTREAM_DATABASE_URL=database_url,
        SOUNDSTREAM_AMQP_URL=amqp_url,
        SOUNDSTREAM_HTTP_HOST="127.0.0.1",
        SOUNDSTREAM_HTTP_PORT=str(port),
        SOUNDSTREAM_ROLES="ingest,api",
        SOUNDSTREAM_API_KEYS=key,
        SOUNDSTREAM_LOG_FORMAT="json",
        **names,
    )
    env.update(settings)
    target = Target(
        host=f"http://127.0.0.1:{port}",
        amqp_url=amqp_url,
        exchange=names["SOUNDSTREAM_AUDIO_EXCHANGE"],
        api_key=key,
        database_url=database_url,
    )
    log = out / "serve.log"
    try:
        await _migrate(env)
        with log.open("wb") as sink:
            process = await anyio.open_process(
                [sys.executable, "-m", "soundstream", "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C reaches the runner, which drains it with SIGTERM.
                start_new_session=True,
            )
        service = Service(target, process, log)
        try:
            await _wait_ready(target.host, process, log)
            yield service
        finally:
            with anyio.CancelScope(shield=True):
                service.exit_code = await _stop(process)
    finally:
        with anyio.CancelScope(shield=True):
            await _cleanup(_drop_database(admin_url, database), f"drop database {database}")
            await _cleanup(_delete_names(amqp_url, names), f"delete the AMQP names {tag}.*")


async def _migrate(env: dict[str, str]) -> None:
    result = await anyio.run_process(
        [sys.executable, "-m", "soundstream", "migrate"], env=env, check=False
    )
    if result.returncode != 0:
        raise SetupError(f"soundstream migrate failed: {result.stderr.decode().strip()}")


async def _wait_ready(host: str, process: Process, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not await anyio.to_thread.run_sync(_ready, host):
        if process.returncode is not None:
            raise SetupError(f"soundstream serve exited with {process.returncode}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise SetupError(
                f"soundstream serve not ready in {READY_TIMEOUT_S:.0f} s: {_tail(log)}"
            )
        await anyio.sleep(0.2)


def _ready(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"{host}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


async def _stop(process: Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    with anyio.move_on_after(STOP_TIMEOUT_S):
        return await process.wait()
    os.killpg(process.pid, signal.SIGKILL)  # with its pool workers
    return await process.wait()


async def _cleanup(step: Awaitable[None], what: str) -> None:
    # A failed clean-up must not hide the run's outcome, nor stop the next step.
    try:
        with anyio.fail_after(CLEANUP_TIMEOUT_S):
            await step
    except Exception as exc:
        print(f"loadtest: could not {what}: {exc!r}", file=sys.stderr)


async def _drop_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def _delete_names(amqp_url: str, names: dict[str, str]) -> None:
    connection = await aiormq.connect(amqp_url)
    try:
        channel = await connection.channel()
        for queue in (names["SOUNDSTREAM_QUEUE"], names["SOUNDSTREAM_DEAD_QUEUE"]):
            await channel.queue_delete(queue)
        for exchange in (names["SOUNDSTREAM_AUDIO_EXCHANGE"], names["SOUNDSTREAM_DEAD_EXCHANGE"]):
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
