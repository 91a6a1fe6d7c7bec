"""Versioned schema migrations: ``NNNN_name.sql`` files applied in order, once each.

Safe to run twice and from several replicas at once: every run takes one
session-level advisory lock before looking at what is applied, so concurrent runs
queue behind each other and the later ones find nothing left to do.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import structlog

from soundstream.store.locks import MIGRATE_LOCK

log = structlog.get_logger(__name__)

_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


# Read once a process: the files ship with the package and do not change while it
# runs, and the schema check reads them on every ingest connection and readiness probe.
@functools.cache
def available() -> tuple[Migration, ...]:
    found = []
    for entry in resources.files("soundstream.store.migrations").iterdir():
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return tuple(sorted(found, key=lambda m: m.version))


async def migrate(
    database_url: str, *, create_database: bool = True, until: int | None = None
) -> list[int]:
    """Apply what is missing (up to version ``until``, for a database as an older
    release left it); return the versions applied by this call."""
    try:
        conn = await asyncpg.connect(database_url)
    except asyncpg.InvalidCatalogNameError:
        if not create_database:
            raise
        await _create_database(database_url)
        conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK)
        try:
            return await _apply(conn, until)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK)
    finally:
        await conn.close()


async def _apply(conn: asyncpg.Connection, until: int | None) -> list[int]:
    await conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version    integer     PRIMARY KEY,
               name       text        NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
    applied = []
    for migration in available():
        if migration.version in done or (until is not None and migration.version > until):
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        log.info("migration_applied", version=migration.version, name=migration.name)
        applied.append(migration.version)
    return applied


async def _create_database(database_url: str) -> None:
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
        log.info("database_created", database=name)
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        pass  # another replica created it first
    finally:
        await admin.close()


async def pending(database_url: str) -> list[int]:
    """Versions not yet applied (empty when the schema is current)."""
    conn = await asyncpg.connect(database_url)
    try:
        return await missing(conn)
    finally:
        await conn.close()


async def missing(conn: asyncpg.Connection) -> list[int]:
    """The versions this code has that the database on ``conn`` has not applied."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = (
        {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        if exists
        else set()
    )
    return [m.version for m in available() if m.version not in done]
