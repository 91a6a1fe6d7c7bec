"""Per-client rate limits and a bound on requests in flight, as plain ASGI middleware.

Both sit on the ``/v1`` mount only: health, readiness, metrics and the API
description must answer however busy the API is, or an orchestrator would restart
a replica for being popular.

The rate limit is a token bucket per client (``burst`` requests at once, refilled
at ``rate`` a second). Every answer it lets through carries the fields of
draft-ietf-httpapi-ratelimit-headers-06: ``RateLimit-Limit`` (the bucket size),
``RateLimit-Remaining`` (whole requests left now) and ``RateLimit-Reset`` (seconds
until the bucket is full again); a refused request gets 429 with ``Retry-After``,
the whole seconds until one more request is allowed.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Iterable
from functools import lru_cache
from itertools import islice

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soundstream.config import Network
from soundstream.http import problems
from soundstream.http.auth import CLIENT

MAX_CLIENTS = 10_000
"""Buckets kept at most. A full bucket is the same as none, so full ones are
dropped first; past that the least recently used go, which at worst gives that
client a fresh burst. About 200 bytes each."""


class RateLimit:
    """A token bucket per client: the authenticated key when ``BearerAuth`` runs
    before this, else the client's address (see ``client_address``)."""

    def __init__(
        self,
        app: ASGIApp,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        trusted_proxies: Iterable[Network] = (),
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        if rate < 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate must be >= 0, burst and max_clients >= 1")
        self.app = app
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._max_clients = max_clients
        self._address = client_address(tuple(trusted_proxies))
        self._limit = str(burst).encode()
        # client -> (tokens, when counted); in order of last use, oldest first.
        self._buckets: dict[str, tuple[float, float]] = {}
        self._refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._rate:
            await self.app(scope, receive, send)
            return
        client = scope.get(CLIENT) or self._address(scope)
        allowed, tokens = self._take(client, self._clock())
        fields = [
            (b"ratelimit-limit", self._limit),
            (b"ratelimit-remaining", str(int(tokens)).encode()),
            (b"ratelimit-reset", str(math.ceil((self._burst - tokens) / self._rate)).encode()),
        ]
        if allowed:
            await self.app(scope, receive, _adding(send, fields))
            return
        self._refused += 1
        wait = max(1, math.ceil((1 - tokens) / self._rate))
        refusal = problems.problem(
            429,
            f"over the rate limit of {self._rate:g} requests/s in bursts of up to"
            f" {self._burst:g}; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
        await refusal(scope, receive, _adding(send, fields))

    def _take(self, client: str, now: float) -> tuple[bool, float]:
        """Take a token from ``client``'s bucket if it has one; return whether it
        had, and the tokens left."""
        buckets = self._buckets
        entry = buckets.pop(client, None)  # re-inserted below: last used goes last
        if entry is None:
            if len(buckets) >= self._max_clients:
                self._prune(now)
            tokens = self._burst
        else:
            tokens = min(self._burst, entry[0] + (now - entry[1]) * self._rate)
        allowed = tokens >= 1
        if allowed:
            tokens -= 1
        buckets[client] = (tokens, now)
        return allowed, tokens

    def _prune(self, now: float) -> None:
        """Drop the full buckets; if that is not enough, the least recently used,
        down to three quarters of the bound, so the next prune is that many new
        clients away and its cost is spread over them."""
        buckets, rate, burst = self._buckets, self._rate, self._burst
        for key in [k for k, (t, at) in buckets.items() if t + (now - at) * rate >= burst]:
            del buckets[key]
        excess = len(buckets) - self._max_clients * 3 // 4
        if excess > 0:
            for key in list(islice(buckets, excess)):
                del buckets[key]

    def statistics(self) -> dict[str, int]:
        return {"clients": len(self._buckets), "refused": self._refused}


class ConcurrencyLimit:
    """At most ``limit`` requests in flight; one more is refused at once with 503
    rather than queued, so a replica sheds load it cannot take and the load
    balancer or client retries elsewhere. A request counts until its answer is
    sent, a streamed body included: the ASGI call returns only then.

    ``exempt`` names requests bounded another way, which never take a place: a live
    stream lasts as long as its client stays, and counted here it would hold a place
    for hours (``http.live`` bounds streams by ``max_live_streams``)."""

    def __init__(
        self, app: ASGIApp, limit: int, exempt: Callable[[Scope], bool] = lambda scope: False
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.app = app
        self._exempt = exempt
        self._free = limit
        self._limit = limit
        self._refused = 0
        self._busy = problems.problem(
            503,
            f"this replica is answering {limit} requests already; retry shortly",
            headers={"Retry-After": "1"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._exempt(scope):
            await self.app(scope, receive, send)
            return
        if self._free <= 0:
            self._refused += 1
            await self._busy(scope, receive, send)
            return
        # One event loop: nothing runs between the check and the take.
        self._free -= 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._free += 1

    def statistics(self) -> dict[str, int]:
        return {"in_flight": self._limit - self._free, "refused": self._refused}


def _adding(send: Send, fields: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            # A new list: a response may reuse its header list for every answer.
            message = {**message, "headers": [*message.get("headers", ()), *fields]}
        await send(message)

    return wrapped


def client_address(trusted: tuple[Network, ...]) -> Callable[[Scope], str]:
    """How to name a request's client: its peer's address, or, when the peer is one
    of the ``trusted`` proxies, the right-most ``X-Forwarded-For`` entry that is
    not. Proxies append what they saw, so entries further left are the client's
    own say and could be anything; with no trusted proxy the header is ignored."""

    def peer(scope: Scope) -> str:
        found = scope.get("client")
        return str(found[0]) if found else "unknown"

    if not trusted:
        return peer

    @lru_cache(maxsize=4096)
    def is_trusted(host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in trusted)

    def forwarded(scope: Scope) -> str:
        address = peer(scope)
        if not is_trusted(address):
            return address
        values = [v for k, v in scope["headers"] if k == b"x-forwarded-for"]
        hops = [h.strip() for h in b",".join(values).decode("latin-1").split(",") if h.strip()]
        for hop in reversed(hops):
            if not is_trusted(hop):
                return hop[:64]
        # Nothing but proxies: the first of them is the client.
        return hops[0][:64] if hops else address

    return forwarded
