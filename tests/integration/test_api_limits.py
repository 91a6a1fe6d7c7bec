"""Keys, rate limit and the bound on requests in flight, as ``create_app`` wires them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from soundstream import config
from soundstream.http import app as api
from soundstream.status import Readiness

KEY = "k" * 20
OTHER_KEY = "another-key-0123456789"
API = config.load({}, roles=frozenset({"api"}), http_host="127.0.0.1")
OPEN_PATHS = ("/healthz", "/readyz", "/openapi.json")


async def ready_ok() -> Readiness:
    return Readiness([], {})


def client_for(app: Starlette, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://t")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def status_and_detail(answer: httpx.Response) -> tuple[int, str]:
    assert answer.headers["content-type"] == "application/problem+json"
    return answer.status_code, answer.json()["detail"]


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(database, min_size=1, max_size=2) as pool:
        yield pool


async def test_v1_is_rate_limited_per_address_and_nothing_else_is(pool: asyncpg.Pool) -> None:
    # 2 requests at once, then one every 100 s: the test's own pace cannot refill it.
    settings = config.replace(API, rate_limit=0.01, rate_burst=2)
    app = api.create_app(settings, pool=pool, ready=ready_ok)
    async with client_for(app, "192.0.2.1") as client, client_for(app, "192.0.2.2") as other:
        first, second = [await client.get("/v1/sensors") for _ in range(2)]
        assert (first.status_code, second.status_code) == (200, 200)
        assert first.json() == {"sensors": [], "next": None}
        assert (first.headers["ratelimit-limit"], first.headers["ratelimit-remaining"]) == (
            "2",
            "1",
        )
        assert second.headers["ratelimit-remaining"] == "0"
        refused = await client.get("/v1/sensors")
        status, detail = status_and_detail(refused)
        assert status == 429 and "rate limit" in detail
        assert 99 <= int(refused.headers["retry-after"]) <= 100
        assert refused.headers["ratelimit-remaining"] == "0"
        assert 199 <= int(refused.headers["ratelimit-reset"]) <= 200
        assert (await client.get("/v1/nowhere")).status_code == 429  # all of /v1
        assert (await other.get("/v1/sensors")).status_code == 200
        for path in OPEN_PATHS:
            for _ in range(5):
                answer = await client.get(path)
                assert answer.status_code == 200, path
                assert "ratelimit-limit" not in answer.headers


async def test_keys_are_checked_before_the_rate_limit_which_is_per_key(
    pool: asyncpg.Pool,
) -> None:
    digests = (config.key_digest(KEY), config.key_digest(OTHER_KEY))
    settings = config.replace(API, api_key_digests=digests, rate_limit=0.01, rate_burst=1)
    app = api.create_app(settings, pool=pool, ready=ready_ok)
    async with client_for(app, "192.0.2.1") as client, client_for(app, "192.0.2.2") as other:
        assert (await client.get("/v1/sensors", headers=bearer(KEY))).status_code == 200
        assert (await other.get("/v1/sensors", headers=bearer(KEY))).status_code == 429
        assert (await client.get("/v1/sensors", headers=bearer(OTHER_KEY))).status_code == 200
        # Without a valid key: 401, never 429, and no bucket is touched.
        for headers in ({}, bearer("wrong-key-0123456789")):
            for _ in range(3):
                answer = await client.get("/v1/sensors", headers=headers)
                assert answer.status_code == 401
                assert "ratelimit-limit" not in answer.headers
        for path in OPEN_PATHS:
            assert (await client.get(path)).status_code == 200


class HeldPool:
    """Stands in for the pool: every query waits for ``release``."""

    def __init__(self, wanted: int) -> None:
        self.waiting = 0
        self.wanted = wanted
        self.all_waiting = anyio.Event()
        self.release = anyio.Event()

    @contextlib.asynccontextmanager
    async def acquire(self, **_: object) -> AsyncIterator[HeldPool]:  # takes timeout=
        yield self  # the "connection" is the pool itself

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        self.waiting += 1
        if self.waiting == self.wanted:
            self.all_waiting.set()
        await self.release.wait()
        return []


async def test_requests_in_flight_are_bounded_and_only_real_work_holds_a_slot() -> None:
    held = HeldPool(wanted=2)
    keys = (config.key_digest(KEY),)
    settings = config.replace(
        API, api_key_digests=keys, rate_limit=0.01, rate_burst=2, max_requests=2
    )
    app = api.create_app(settings, pool=held, ready=ready_ok)  # type: ignore[arg-type]
    statuses: list[int] = []
    async with client_for(app, "192.0.2.1") as client, client_for(app, "192.0.2.2") as other:

        async def query() -> None:
            statuses.append((await client.get("/v1/sensors", headers=bearer(KEY))).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(query)
            tg.start_soon(query)
            await held.all_waiting.wait()
            # Both slots taken. A client over its rate is told so (429), one without a
            # key is refused (401): neither needs a slot.
            assert (await client.get("/v1/sensors", headers=bearer(KEY))).status_code == 429
            assert (await other.get("/v1/sensors")).status_code == 401
            for path in OPEN_PATHS:
                assert (await other.get(path)).status_code == 200
            held.release.set()
        assert statuses == [200, 200]


async def test_one_request_more_than_the_bound_gets_503_at_once() -> None:
    held = HeldPool(wanted=2)
    settings = config.replace(API, rate_limit=0.0, max_requests=2)
    app = api.create_app(settings, pool=held, ready=ready_ok)  # type: ignore[arg-type]
    async with client_for(app) as client:
        statuses: list[int] = []

        async def query() -> None:
            statuses.append((await client.get("/v1/sensors")).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(query)
            tg.start_soon(query)
            await held.all_waiting.wait()
            refused = await client.get("/v1/sensors")
            status, detail = status_and_detail(refused)
            assert status == 503 and "2 requests" in detail
            assert refused.headers["retry-after"] == "1"
            for path in OPEN_PATHS:
                assert (await client.get(path)).status_code == 200
            held.release.set()
        assert statuses == [200, 200]
        assert (await client.get("/v1/sensors")).status_code == 200
