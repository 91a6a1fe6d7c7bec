"""Rate and concurrency limits on a small app: an injected clock, events, no sleeps."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from soundstream import config
from soundstream.http.auth import BearerAuth
from soundstream.http.limits import ConcurrencyLimit, RateLimit

KEY = "first-key-0123456789"
OTHER_KEY = "second-key-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


def small_app(*middleware: Middleware, routes: list[Route] | None = None) -> Starlette:
    """``/v1`` behind ``middleware``; the routes every replica answers beside it."""
    v1 = [Route("/sensors", ok), *(routes or [])]
    return Starlette(
        routes=[
            *(Route(path, ok) for path in ("/healthz", "/readyz", "/metrics", "/openapi.json")),
            Mount("/v1", routes=v1, middleware=list(middleware)),
        ]
    )


def limiter(app: Starlette) -> RateLimit:
    """The RateLimit instance inside the ``/v1`` mount (built on first request)."""
    node: Any = app.routes[-1].app  # type: ignore[attr-defined]
    while not isinstance(node, RateLimit):
        node = node.app
    return node


def client_for(app: Starlette, address: str = "127.0.0.1", **kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000), **kwargs)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


def rate_limit(clock: Clock, rate: float = 1.0, burst: int = 3, **kwargs: Any) -> Middleware:
    return Middleware(RateLimit, rate=rate, burst=burst, clock=clock, **kwargs)


def problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert body["status"] == status and body["detail"]
    return body


def quota(answer: httpx.Response) -> tuple[str, str, str]:
    h = answer.headers
    return h["ratelimit-limit"], h["ratelimit-remaining"], h["ratelimit-reset"]


# --- rate limit -----------------------------------------------------------------


async def test_429_after_the_burst_with_retry_after_and_ratelimit_fields() -> None:
    clock = Clock()
    app = small_app(rate_limit(clock, rate=1.0, burst=3))
    async with client_for(app) as client:
        answers = [await client.get("/v1/sensors") for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        # Limit is the bucket; Reset, the seconds until it is full again.
        assert [quota(a) for a in answers] == [("3", "2", "1"), ("3", "1", "2"), ("3", "0", "3")]
        refused = await client.get("/v1/sensors")
        body = problem(refused, 429)
        assert "rate limit" in body["detail"]
        assert refused.headers["retry-after"] == "1"
        assert quota(refused) == ("3", "0", "3")
        # A refusal takes nothing: the wait does not grow with retries.
        assert (await client.get("/v1/sensors")).headers["retry-after"] == "1"
        assert limiter(app).statistics() == {"clients": 1, "refused": 2}


@pytest.mark.parametrize(
    ("rate", "elapsed", "retry_after"),
    [(0.4, 0.0, "3"), (0.4, 2.4, "1"), (2.0, 0.0, "1"), (0.1, 0.5, "10"), (0.001, 0.0, "1000")],
)
async def test_retry_after_is_whole_seconds_rounded_up(
    rate: float, elapsed: float, retry_after: str
) -> None:
    clock = Clock()
    app = small_app(rate_limit(clock, rate=rate, burst=1))
    async with client_for(app) as client:
        assert (await client.get("/v1/sensors")).status_code == 200
        clock.now += elapsed
        refused = await client.get("/v1/sensors")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == retry_after


async def test_the_bucket_refills_with_time_up_to_the_burst() -> None:
    clock = Clock()
    app = small_app(rate_limit(clock, rate=2.0, burst=4))
    async with client_for(app) as client:

        async def allowed_now() -> int:
            count = 0
            while (await client.get("/v1/sensors")).status_code == 200:
                count += 1
            return count

        assert await allowed_now() == 4
        clock.now += 0.25  # half a token
        assert await allowed_now() == 0
        clock.now += 0.25
        assert await allowed_now() == 1
        clock.now += 1.5
        assert await allowed_now() == 3
        clock.now += 3600
        assert await allowed_now() == 4  # never more than the burst


async def test_addresses_have_buckets_of_their_own() -> None:
    app = small_app(rate_limit(Clock(), burst=2))
    async with client_for(app, "192.0.2.1") as one, client_for(app, "192.0.2.2") as two:
        assert [(await one.get("/v1/sensors")).status_code for _ in range(3)] == [200, 200, 429]
        assert [(await two.get("/v1/sensors")).status_code for _ in range(3)] == [200, 200, 429]


async def test_keys_have_buckets_of_their_own_wherever_they_come_from() -> None:
    digests = (config.key_digest(KEY), config.key_digest(OTHER_KEY))
    app = small_app(Middleware(BearerAuth, digests=digests), rate_limit(Clock(), burst=2))
    first = {"Authorization": f"Bearer {KEY}"}
    other = {"Authorization": f"Bearer {OTHER_KEY}"}
    async with client_for(app, "192.0.2.1") as here, client_for(app, "198.51.100.9") as there:
        assert (await here.get("/v1/sensors", headers=first)).status_code == 200
        assert (await there.get("/v1/sensors", headers=first)).status_code == 200
        assert (await here.get("/v1/sensors", headers=first)).status_code == 429  # one bucket
        assert (await here.get("/v1/sensors", headers=other)).status_code == 200
        # Without a valid key: 401 before the limit, whatever the bucket holds.
        assert (await here.get("/v1/sensors")).status_code == 401
        assert "ratelimit-limit" not in (await here.get("/v1/sensors")).headers
    assert limiter(app).statistics()["clients"] == 2


async def test_rate_zero_limits_nothing() -> None:
    app = small_app(rate_limit(Clock(), rate=0.0, burst=1))
    async with client_for(app) as client:
        for _ in range(20):
            answer = await client.get("/v1/sensors")
            assert answer.status_code == 200 and "ratelimit-limit" not in answer.headers


async def test_only_v1_is_limited() -> None:
    app = small_app(rate_limit(Clock(), burst=1), Middleware(ConcurrencyLimit, limit=1))
    async with client_for(app) as client:
        assert (await client.get("/v1/sensors")).status_code == 200
        assert (await client.get("/v1/sensors")).status_code == 429
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            for _ in range(5):
                answer = await client.get(path)
                assert answer.status_code == 200 and "ratelimit-limit" not in answer.headers


# --- who the client is behind a proxy ---------------------------------------------

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        # From a trusted proxy: the right-most address that is not a proxy.
        ("10.0.0.5", "203.0.113.7", "203.0.113.7"),
        ("10.0.0.5", "203.0.113.7, 10.1.1.1", "203.0.113.7"),
        ("10.0.0.5", "198.51.100.1, 203.0.113.7", "203.0.113.7"),  # left of it: the client's say
        ("10.0.0.5", "garbage, 203.0.113.7,10.2.2.2", "203.0.113.7"),
        ("2001:db8::1", "203.0.113.7", "203.0.113.7"),
        ("::ffff:10.0.0.5", "203.0.113.7", "203.0.113.7"),
        ("10.0.0.5", "10.3.3.3, 10.4.4.4", "10.3.3.3"),  # only proxies: the first
        ("10.0.0.5", None, "10.0.0.5"),  # the proxy's own requests (health checks)
        # From anyone else the header is ignored.
        ("192.0.2.50", "203.0.113.7", "192.0.2.50"),
        ("::ffff:192.0.2.50", "203.0.113.7", "::ffff:192.0.2.50"),
    ],
)
async def test_x_forwarded_for_is_believed_from_trusted_proxies_only(
    peer: str, forwarded: str | None, client: str
) -> None:
    app = small_app(rate_limit(Clock(), burst=1, trusted_proxies=PROXIES))
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    async with client_for(app, peer) as proxy:
        assert (await proxy.get("/v1/sensors", headers=headers)).status_code == 200
    assert list(limiter(app)._buckets) == [client]


async def test_forwarded_clients_behind_one_proxy_are_limited_apart() -> None:
    app = small_app(rate_limit(Clock(), burst=1, trusted_proxies=PROXIES))
    async with client_for(app, "10.0.0.5") as proxy, client_for(app, "192.0.2.50") as direct:

        async def status(client: httpx.AsyncClient, forwarded: str) -> int:
            return (
                await client.get("/v1/sensors", headers={"X-Forwarded-For": forwarded})
            ).status_code

        assert await status(proxy, "203.0.113.7") == 200
        assert await status(proxy, "203.0.113.8") == 200
        assert await status(proxy, "203.0.113.7") == 429
        # A client naming others in the header cannot spread itself over buckets.
        assert await status(direct, "203.0.113.9") == 200
        assert await status(direct, "203.0.113.10") == 429


async def test_without_trusted_proxies_the_header_is_ignored() -> None:
    app = small_app(rate_limit(Clock(), burst=1))
    async with client_for(app, "10.0.0.5") as client:
        assert (await client.get("/v1/sensors", headers={"X-Forwarded-For": "1.2.3.4"})).is_success
        answer = await client.get("/v1/sensors", headers={"X-Forwarded-For": "5.6.7.8"})
        assert answer.status_code == 429


# --- a bounded table of buckets ----------------------------------------------------


async def test_cycling_addresses_cannot_grow_the_table() -> None:
    clock = Clock()
    app = small_app(rate_limit(clock, rate=1.0, burst=100, max_clients=100))
    async with client_for(app, "192.0.2.1") as heavy:
        for _ in range(100):
            assert (await heavy.get("/v1/sensors")).status_code == 200
        assert (await heavy.get("/v1/sensors")).status_code == 429
        # 1024 one-request clients over 16 s: each bucket is full (and dropped) 1 s
        # after its request; the heavy client's is not, and must be kept.
        start = clock.now
        for i in range(1024):
            clock.now = start + i / 64
            async with client_for(app, f"10.{i // 256}.{i % 256}.1") as one:
                assert (await one.get("/v1/sensors")).status_code == 200
            assert limiter(app).statistics()["clients"] <= 100
        clock.now = start + 16
        allowed = 0
        while (await heavy.get("/v1/sensors")).status_code == 200:
            allowed += 1
        assert allowed == 16  # refilled for 16 s, not handed a fresh bucket of 100


async def test_the_table_stays_bounded_when_no_bucket_is_full() -> None:
    app = small_app(rate_limit(Clock(), rate=1.0, burst=5, max_clients=50))
    for i in range(500):  # all at one instant: nothing refills, the oldest go
        async with client_for(app, f"10.0.{i // 256}.{i % 256}") as client:
            assert (await client.get("/v1/sensors")).status_code == 200
            assert limiter(app).statistics()["clients"] <= 50
    async with client_for(app, "10.0.0.0") as client:  # evicted long ago: a fresh bucket
        assert [(await client.get("/v1/sensors")).status_code for _ in range(6)][-2:] == [200, 429]


# --- requests in flight -----------------------------------------------------------


class Gate:
    """A route that holds each request until ``release`` is set."""

    def __init__(self) -> None:
        self.entered = 0
        self.arrived = anyio.Event()
        self.release = anyio.Event()
        self.wanted = 1

    async def hold(self, request: Request) -> Response:
        self.entered += 1
        if self.entered >= self.wanted:
            self.arrived.set()
        await self.release.wait()
        return PlainTextResponse("held")

    async def stream(self, request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"first,"
            self.arrived.set()  # the head and a first part are out
            await self.release.wait()
            yield b"last"

        return StreamingResponse(body(), media_type="text/plain")


def gated(gate: Gate, limit: int) -> Starlette:
    async def fail(request: Request) -> Response:
        raise RuntimeError("a bug")

    return small_app(
        Middleware(ConcurrencyLimit, limit=limit),
        routes=[Route("/hold", gate.hold), Route("/stream", gate.stream), Route("/fail", fail)],
    )


async def test_one_request_over_the_bound_gets_503_at_once() -> None:
    gate = Gate()
    gate.wanted = 2
    app = gated(gate, limit=2)
    statuses: list[int] = []
    async with client_for(app) as client:

        async def held() -> None:
            statuses.append((await client.get("/v1/hold")).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(held)
            tg.start_soon(held)
            await gate.arrived.wait()
            refused = await client.get("/v1/sensors")
            problem(refused, 503)
            assert refused.headers["retry-after"] == "1"
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
                assert (await client.get(path)).status_code == 200
            gate.release.set()
        assert statuses == [200, 200]
        assert (await client.get("/v1/sensors")).status_code == 200


async def test_a_streamed_answer_counts_until_its_body_is_sent() -> None:
    gate = Gate()
    app = gated(gate, limit=1)
    async with client_for(app) as client:
        bodies: list[str] = []

        async def streamed() -> None:
            bodies.append((await client.get("/v1/stream")).text)

        async with anyio.create_task_group() as tg:
            tg.start_soon(streamed)
            await gate.arrived.wait()
            problem(await client.get("/v1/sensors"), 503)
            gate.release.set()
        assert bodies == ["first,last"]
        assert (await client.get("/v1/sensors")).status_code == 200


async def test_a_failed_request_gives_its_slot_back() -> None:
    app = gated(Gate(), limit=1)
    async with client_for(app, raise_app_exceptions=False) as client:
        for _ in range(3):
            assert (await client.get("/v1/fail")).status_code == 500
        assert (await client.get("/v1/sensors")).status_code == 200


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        ConcurrencyLimit(small_app(), 0)
    with pytest.raises(ValueError):
        RateLimit(small_app(), rate=-1, burst=1)
    with pytest.raises(ValueError):
        RateLimit(small_app(), rate=1, burst=0)
