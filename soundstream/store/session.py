"""What a connection pool does with a connection given back to it."""

from __future__ import annotations

import asyncpg


async def keep_session(conn: asyncpg.Connection) -> None:
    """A pool's ``reset`` for connections that keep no session state between uses:
    settings only ``SET LOCAL``, locks only for a transaction, no ``LISTEN``, no
    cursor outside a transaction. asyncpg's default reset is a round trip
    (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) on every
    release; a transaction left open is still rolled back without it."""
