"""Bearer keys: held as digests, compared in full, never shown."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from soundstream import config
from soundstream.http import auth
from soundstream.http.auth import CLIENT, BearerAuth

KEY = "first-key-0123456789"
OTHER_KEY = "second-key-0123456789"
DIGESTS = (config.key_digest(KEY), config.key_digest(OTHER_KEY))


async def whoami(request: Request) -> Response:
    return PlainTextResponse(request.scope.get(CLIENT, "nobody"))


def guarded(digests: tuple[bytes, ...] = DIGESTS) -> Starlette:
    return Starlette(
        routes=[
            Route("/healthz", whoami),
            Mount(
                "/v1",
                routes=[Route("/whoami", whoami)],
                middleware=[Middleware(BearerAuth, digests=digests)],
            ),
        ]
    )


def client_for(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_valid_key_names_its_client_by_a_digest_prefix() -> None:
    async with client_for(guarded()) as client:
        first = await client.get("/v1/whoami", headers=bearer(KEY))
        second = await client.get("/v1/whoami", headers={"Authorization": f"bearer  {OTHER_KEY} "})
    assert first.status_code == second.status_code == 200
    assert first.text == hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert second.text == hashlib.sha256(OTHER_KEY.encode()).hexdigest()[:12]
    assert KEY not in first.text


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        b"",
        b"Bearer",
        b"Bearer ",
        b"Bearer wrong-key-0123456789",
        f"Bearer {KEY}x".encode(),
        f"Bearer {KEY[:-1]}".encode(),
        f"Basic {KEY}".encode(),
        KEY.encode(),
        b"Bearer \xe9\xff",
        # The digest itself is not a key.
        b"Bearer " + DIGESTS[0].hex().encode(),
    ],
)
async def test_a_wrong_or_missing_key_is_401(authorization: bytes | None) -> None:
    headers = [] if authorization is None else [(b"authorization", authorization)]
    async with client_for(guarded()) as client:
        for _ in range(2):  # the ready-made answer serves every refusal alike
            answer = await client.get("/v1/whoami", headers=headers)
            assert answer.status_code == 401
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.headers["www-authenticate"] == 'Bearer realm="soundstream"'
            assert answer.json()["status"] == 401
            assert len(answer.headers.get_list("www-authenticate")) == 1
        assert (await client.get("/healthz")).text == "nobody"  # outside /v1: no key asked


async def test_every_digest_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[bytes] = []
    real = auth.hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    many = tuple(config.key_digest(f"key-number-{i:04d}-padding") for i in range(5))
    async with client_for(guarded(many)) as client:
        assert (
            await client.get("/v1/whoami", headers=bearer("key-number-0000-padding"))
        ).is_success
        assert compared == list(many)
        compared.clear()
        assert (
            await client.get("/v1/whoami", headers=bearer("not-any-key-at-all"))
        ).status_code == 401
        assert compared == list(many)


def test_the_middleware_holds_no_key() -> None:
    middleware = BearerAuth(guarded(), DIGESTS)
    held = repr(vars(middleware)) + repr(middleware)
    assert KEY not in held and OTHER_KEY not in held
    assert KEY.encode() not in [v for v in vars(middleware).values() if isinstance(v, bytes)]
    with pytest.raises(ValueError, match="at least one"):
        BearerAuth(guarded(), ())


async def test_keys_never_reach_the_logs() -> None:
    settings = config.load(
        {"SOUNDSTREAM_API_KEYS": f"{KEY},{OTHER_KEY}", "SOUNDSTREAM_HTTP_HOST": "0.0.0.0"}
    )
    with structlog.testing.capture_logs() as logs:
        structlog.get_logger("test").info("settings", settings=settings)
        async with client_for(guarded(settings.api_key_digests)) as client:
            await client.get("/v1/whoami", headers=bearer(KEY))
            await client.get("/v1/whoami", headers=bearer(KEY + "x"))
    shown = repr(logs)
    assert logs and KEY not in shown and OTHER_KEY not in shown
    assert DIGESTS[0].hex() not in shown
