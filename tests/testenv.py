"""Where the tests find PostgreSQL and RabbitMQ, and how they name what they make."""

from __future__ import annotations

import os
import shutil
import uuid

import aiormq
import pytest

PG_ADMIN_URL = os.environ.get(
    "SOUNDSTREAM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("SOUNDSTREAM_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def database_url(name: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def installed_tool(path: str, installer: str, package: str) -> str:
    """``path`` (or the command of its name on PATH) when it is there. Missing where
    ``installer`` could have installed it (root with apt-get: ``make test`` runs it)
    is a broken setup and fails; elsewhere the test skips, saying how to get it."""
    found = path if os.access(path, os.X_OK) else shutil.which(os.path.basename(path))
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail(
            f"{path} is missing although {installer} could install it here (root, apt-get): "
            f"run {installer} (make test does) and look at what it says",
            pytrace=False,
        )
    pytest.skip(
        f"{path} is missing and {installer} can only install it as root on Debian: "
        f"run it as root, or install Debian's {package} package"
    )


async def delete_topology(url: str, names: dict[str, str]) -> None:
    """Delete a test's exchanges and queues (``amqp_names``)."""
    connection = await aiormq.connect(url)
    try:
        ch = await connection.channel()
        for queue in {names["queue"], names["dead_queue"]}:
            await ch.queue_delete(queue)
        for exchange in (names["audio_exchange"], names["dead_exchange"]):
            await ch.exchange_delete(exchange)
    finally:
        await connection.close()
