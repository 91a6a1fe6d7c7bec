"""Fixtures of the fault tests: a vhost of the test's own, a fresh migrated
database (``database`` from tests/conftest.py), and replicas that are always killed.

Every test here is marked ``faults``; the one that restarts the shared broker is
also marked ``broker_restart`` (``-m "not broker_restart"`` while others use it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from replicas import Broker, Cluster, Store
from testenv import unique


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    """A fresh vhost (guest may do anything in it); deleted afterwards, which also
    closes whatever is still connected to it."""
    vhost = Broker(unique("faults"))
    await vhost.create()
    try:
        yield vhost
    finally:
        await vhost.delete()


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    rows = Store(database)
    try:
        yield rows
    finally:
        await rows.close()


@pytest.fixture
def cluster(broker: Broker, database: str, tmp_path: Path) -> Iterator[Cluster]:
    replicas = Cluster(broker, database, tmp_path)
    try:
        yield replicas
    finally:
        replicas.close()
