"""Where the tests find PostgreSQL and RabbitMQ, and how they name what they make."""

from __future__ import annotations

import os
import uuid

PG_ADMIN_URL = os.environ.get(
    "SOUNDSTREAM_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("SOUNDSTREAM_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def database_url(name: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"
