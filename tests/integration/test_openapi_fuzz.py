"""The served OpenAPI document against the API that serves it.

schemathesis loads ``/openapi.json`` from the app and draws requests for every
operation from it (the document's examples, boundary values, then random values,
valid and invalid) against a freshly migrated database holding a few sensors'
frames. No answer may be a server error, and each must match what the document
says of its status, media type, headers and body (JSON answers, and each line of
an NDJSON one). With API keys the key is sent, and leaving it out must give 401.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import jsonschema_rs
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import HookContext
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python.asgi import shutdown_lifespans
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send
from test_api import API, KEY, OFFLINE, T0, add_frames, add_sensor, digests, iso, ready_ok

from soundstream import config
from soundstream.core.timefmt import parse_timestamp
from soundstream.core.wire import valid_sensor_id
from soundstream.http import app as api

# No rate limit, or the fuzzer would mostly meet 429s; the document lists 429 anyway,
# and test_refusals_answer_as_documented checks it.
OPEN = config.replace(API, rate_limit=0.0)
KEYED = config.replace(OPEN, api_key_digests=digests(KEY))
AUTHORIZED = {"Authorization": f"Bearer {KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Bounded and repeatable: the same requests on every run.
FUZZ = hypothesis_settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    # One app and database serve every example of an operation, on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SENSORS = {"mic-1": 400, "mic-2": 250, "mic-3": 40}  # frames each, from T0 on


class Served:
    """The API app with its database pool made on startup, in the event loop that
    then serves it (schemathesis runs ASGI apps in an event loop of its own)."""

    def __init__(self, settings: config.Settings, database: str, *, min_size: int = 1) -> None:
        self._settings = settings
        self._database = database
        self._min_size = min_size
        self._pool: asyncpg.Pool | None = None
        self._app: Starlette | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert self._app is not None, "the lifespan has not started"
        await self._app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._pool = await asyncpg.create_pool(
                    self._database, min_size=self._min_size, max_size=4
                )
                self._app = api.create_app(self._settings, pool=self._pool, ready=ready_ok)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._pool is not None:
                    await self._pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def documented(settings: config.Settings) -> Any:
    """The document an app with ``settings`` serves (it needs no database for that).
    The cases drawn from it go to a ``Served`` app of the same settings, which
    serves the same document (checked). Loaded at import because
    ``schemathesis.pytest.from_fixture`` does not run on pytest 9.2."""
    app = api.create_app(settings, pool=object(), ready=ready_ok)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# --- steering some draws onto the seeded frames -------------------------------------


def _dated(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_timestamp(value)
    except ValueError:
        return False
    return True


def _moved(query: dict[str, Any], offset_ms: int, span_ms: int, sensors: list[str]) -> Any:
    start = T0 + timedelta(milliseconds=offset_ms)
    moved = {**query, "start": iso(start), "end": iso(start + timedelta(milliseconds=span_ms))}
    named = query.get("sensor_id")
    if isinstance(named, list) and all(valid_sensor_id(name) for name in named):
        moved["sensor_id"] = sensors
    return moved


def flatmap_query(context: HookContext, query: Any) -> st.SearchStrategy[Any]:
    """Drawn ranges are mostly years wide or backwards, and drawn sensors mostly
    have no frames: move some valid ones onto the seeded frames, so that answers
    with rows in them are drawn as well. Invalid values stay as drawn."""
    if not (isinstance(query, dict) and _dated(query.get("start")) and _dated(query.get("end"))):
        return st.just(query)
    moved = st.builds(
        _moved,
        st.just(query),
        st.integers(0, 15_000),
        st.integers(1, 20_000),
        st.lists(st.sampled_from(sorted(SENSORS)), min_size=1, max_size=3),
    )
    return st.one_of(st.just(query), moved)


def flatmap_path_parameters(context: HookContext, parameters: Any) -> st.SearchStrategy[Any]:
    if not (isinstance(parameters, dict) and valid_sensor_id(parameters.get("sensor_id"))):
        return st.just(parameters)
    seeded = st.sampled_from(sorted(SENSORS)).map(lambda name: {**parameters, "sensor_id": name})
    return st.one_of(st.just(parameters), seeded)


OPEN_API = documented(OPEN)
# Health, readiness and the document do not depend on keys: fuzzed once, above.
KEYED_API = documented(KEYED).include(path_regex="^/v1/")
for _schema in (OPEN_API, KEYED_API):
    _schema.hook(flatmap_query)
    _schema.hook(flatmap_path_parameters)


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture
async def seeded(database: str) -> str:
    """``database`` with frames of a few sensors, and their summaries (one with seqs
    missing)."""
    async with asyncpg.create_pool(database, min_size=1, max_size=2) as pool:
        for sensor_id, frames in SENSORS.items():
            await add_frames(pool, sensor_id, frames)
            chunks = frames // 31 + 1
            seqs = [seq for seq in range(chunks + 2) if sensor_id != "mic-2" or seq % 3]
            await add_sensor(pool, sensor_id, seqs, frames=frames)
    return database


def _served(settings: config.Settings, database: str, schema: Any) -> Iterator[Served]:
    app = Served(settings, database)
    try:
        # The app under test serves the very document the cases are drawn from.
        assert schemathesis.openapi.from_asgi("/openapi.json", app).raw_schema == schema.raw_schema
        yield app
    finally:
        shutdown_lifespans()  # closes the pool before the database is dropped


@pytest.fixture
def open_app(seeded: str) -> Iterator[Served]:
    yield from _served(OPEN, seeded, OPEN_API)


@pytest.fixture
def keyed_app(seeded: str) -> Iterator[Served]:
    yield from _served(KEYED, seeded, KEYED_API)


def ndjson_lines_conform(case: Any, response: Any) -> None:
    """Each line of an NDJSON answer is one row as the document describes it (the
    schema of an NDJSON media type describes a line)."""
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code != 200 or not content_type.startswith("application/x-ndjson"):
        return
    content = case.operation.definition.raw["responses"]["200"]["content"]
    components = case.operation.schema.raw_schema["components"]
    validator = jsonschema_rs.validator_for(
        {**content["application/x-ndjson"]["schema"], "components": components}
    )
    for line in response.content.splitlines():
        errors = [error.message for error in validator.iter_errors(orjson.loads(line))]
        assert not errors, (case.as_curl_command(), line[:200], errors[:3])


# --- tests --------------------------------------------------------------------------


@OPEN_API.parametrize()
@FUZZ
def test_open_api_answers_as_documented(case: Any, open_app: Served) -> None:
    response = case.call_and_validate(app=open_app, checks=CHECKS)
    ndjson_lines_conform(case, response)


@KEYED_API.parametrize()
@FUZZ
def test_keyed_api_answers_as_documented(case: Any, keyed_app: Served) -> None:
    response = case.call_and_validate(
        app=keyed_app, headers=AUTHORIZED, checks=[*CHECKS, ignored_auth]
    )
    ndjson_lines_conform(case, response)


def test_refusals_answer_as_documented(seeded: str) -> None:
    """401, 429 and 503, which the fuzzed apps do not give, as their documents say:
    each checked against the document the refusing app serves."""
    page = {"start": iso(T0), "end": iso(T0 + timedelta(seconds=5)), "limit": 10}

    def features(app: Served, checks: list[Any] = CHECKS, **kwargs: Any) -> tuple[Any, Any]:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        case = schema["/v1/sensors/{sensor_id}/features"]["GET"].Case(
            path_parameters={"sensor_id": "mic-1"}, query=page
        )
        response = case.call(**kwargs)
        case.validate_response(response, checks=checks)
        return case, response

    try:
        _, refused = features(Served(KEYED, seeded))
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"][0].startswith("Bearer")

        rated = Served(config.replace(KEYED, rate_limit=0.01, rate_burst=1), seeded)
        case, first = features(rated, headers=AUTHORIZED)
        assert first.status_code == 200
        assert first.headers["x-next-cursor"] and first.headers["link"]
        assert first.headers["ratelimit-limit"] == ["1"]
        assert first.headers["ratelimit-remaining"] == ["0"]
        again = case.call(headers=AUTHORIZED)
        case.validate_response(again, checks=CHECKS)
        assert again.status_code == 429
        assert int(again.headers["retry-after"][0]) >= 1

        # A 503 by design: all checks but the one against server errors.
        _, away = features(Served(OPEN, OFFLINE, min_size=0), checks=CHECKS[1:])
        assert away.status_code == 503
        assert int(away.headers["retry-after"][0]) >= 1
    finally:
        shutdown_lifespans()
