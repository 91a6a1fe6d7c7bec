"""Nothing lost: every chunk the broker confirmed to a sensor user ends up stored.

The local run asks its database (``chunks``, one row per stored chunk); a run against
a deployment asks the API (``/v1/sensors/{id}``: ``last_seq`` and ``missing_seq``).
The queue may still hold a backlog when the load stops, so the check waits, bounded,
for the missing ones to arrive.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import anyio
import asyncpg

Stored = dict[str, set[int]]
API_ATTEMPTS = 5


@dataclass(frozen=True)
class Verdict:
    confirmed: int  # chunks the broker confirmed
    stored: int  # of those, stored
    unconfirmed_stored: dict[str, list[int]]  # stored, but no confirm was counted
    missing: dict[str, list[int]]  # confirmed, never stored
    waited_s: float

    @property
    def ok(self) -> bool:
        return not self.missing

    def __str__(self) -> str:
        text = (
            f"stored {self.stored} of {self.confirmed} confirmed chunks "
            f"(waited {self.waited_s:.1f} s for the queue to drain"
        )
        extra = sum(len(seqs) for seqs in self.unconfirmed_stored.values())
        if extra:
            # Locust stops a user between its sleep and its task now and then: the
            # chunk reaches the broker but the user is gone before the confirm.
            text += f"; {extra} more sent without a confirm, as the run ended or failed"
        return text + ")"


async def wait_stored(
    confirmed: Stored, fetch: Callable[[list[str]], Awaitable[Stored]], timeout_s: float
) -> Verdict:
    """Poll ``fetch`` until every confirmed chunk is stored or ``timeout_s`` passed."""
    started = time.monotonic()
    sensors = sorted(confirmed)
    while True:
        stored = await fetch(sensors) if sensors else {}
        missing = {
            sensor: sorted(seqs - stored.get(sensor, set()))
            for sensor, seqs in confirmed.items()
            if seqs - stored.get(sensor, set())
        }
        waited = time.monotonic() - started
        if not missing or waited >= timeout_s:
            total = sum(len(seqs) for seqs in confirmed.values())
            lost = sum(len(seqs) for seqs in missing.values())
            extra = {
                sensor: sorted(stored.get(sensor, set()) - seqs)
                for sensor, seqs in confirmed.items()
                if stored.get(sensor, set()) - seqs
            }
            return Verdict(total, total - lost, extra, missing, waited)
        await anyio.sleep(0.5)


def from_database(database_url: str) -> Callable[[list[str]], Awaitable[Stored]]:
    async def fetch(sensors: list[str]) -> Stored:
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch(
                "SELECT sensor_id, seq FROM chunks WHERE sensor_id = ANY($1::text[])", sensors
            )
        finally:
            await connection.close()
        stored: Stored = {}
        for row in rows:
            stored.setdefault(row["sensor_id"], set()).add(int(row["seq"]))
        return stored

    return fetch


def from_api(host: str, api_key: str) -> Callable[[list[str]], Awaitable[Stored]]:
    async def fetch(sensors: list[str]) -> Stored:
        return {s: await anyio.to_thread.run_sync(_stored_seqs, host, api_key, s) for s in sensors}

    return fetch


def _stored_seqs(host: str, api_key: str, sensor_id: str) -> set[int]:
    """Seqs 0..last_seq less the missing ranges (load-test sensors start at 0)."""
    request = urllib.request.Request(f"{host.rstrip('/')}/v1/sensors/{quote(sensor_id)}")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key.split(',', maxsplit=1)[0].strip()}")
    for attempt in range(API_ATTEMPTS):
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status = json.load(answer)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return set()
            # Over the key's rate limit, or the replica busy: come back as asked.
            if exc.code not in (429, 503) or attempt == API_ATTEMPTS - 1:
                raise
            time.sleep(min(5.0, float(exc.headers.get("Retry-After") or 1)))
    seqs = set(range(status["last_seq"] + 1))
    for low, high in status["missing_seq"]:
        seqs -= set(range(low, high + 1))
    return seqs
