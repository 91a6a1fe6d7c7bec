"""The HTTP API against a real, freshly migrated PostgreSQL database, seeded with SQL."""

from __future__ import annotations

import ast
import base64
import hashlib
import inspect
import random
import re
from collections.abc import AsyncIterator, MutableMapping
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from soundstream import config
from soundstream.core import fields
from soundstream.core.timefmt import to_micros
from soundstream.http import app as api
from soundstream.http import cursor, openapi, problems, query
from soundstream.http import features as feature_routes
from soundstream.status import Readiness, Status
from soundstream.store import read

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOP = timedelta(microseconds=32_000)
KEY = "k" * 20
OTHER_KEY = "another-key-0123456789"
# Loopback and no rate limit: these tests make hundreds of requests from one address;
# the limits have tests of their own (test_api_limits.py).
API = config.load({}, roles=frozenset({"api"}), http_host="127.0.0.1", rate_limit=0.0)
SCALARS = list(fields.SCALARS)
OFFLINE = "postgresql://postgres@127.0.0.1:1/none"


def digests(*keys: str) -> tuple[bytes, ...]:
    return tuple(config.key_digest(key) for key in keys)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ts(i: int) -> datetime:
    return T0 + i * HOP


async def ready_ok() -> Readiness:
    return Readiness([], {})


def client_for(app: Starlette, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, **kwargs), base_url="http://t")


@pytest.fixture
async def client(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(api.create_app(API, pool=pool, ready=ready_ok)) as client:
        yield client


@pytest.fixture
async def offline_client() -> AsyncIterator[httpx.AsyncClient]:
    """A client whose pool cannot connect (nothing listens on port 1; min_size=0 connects
    only on use): for requests that must be answered before any query is made. One
    that reached the database would get a 503."""
    async with (
        asyncpg.create_pool(OFFLINE, min_size=0, max_size=1) as pool,
        client_for(api.create_app(API, pool=pool, ready=ready_ok)) as client,
    ):
        yield client


# --- seeding ----------------------------------------------------------------------
# Frame i of a seeded sensor is at ts(i) and carries values exact in float32, so the
# expected JSON can be written down: rms i/4, zcr 0.5, centroid 1000+i, bandwidth 200,
# rolloff 3000, flatness 0.125, dominant_hz 440, mel[k] = i + k/4, mfcc[k] = -k.


def expected_frame(i: int, fields: list[str] | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "ts": iso(ts(i)),
        "rms": i / 4,
        "zcr": 0.5,
        "centroid": 1000.0 + i,
        "bandwidth": 200.0,
        "rolloff": 3000.0,
        "flatness": 0.125,
        "dominant_hz": 440.0,
        "mel": [i + k / 4 for k in range(32)],
        "mfcc": [float(-k) for k in range(13)],
    }
    if fields is not None:
        frame = {name: frame[name] for name in ["ts", *fields]}
    return frame


# Frames given one per row (the columns of the ``frames`` view), stored the way the
# writer stores them: one ``chunk_frames`` row per seq.
_STAGE = """
CREATE TEMP TABLE frames_in (
    sensor_id text, ts timestamptz, seq bigint, rms real, zcr real, centroid real,
    bandwidth real, rolloff real, flatness real, dominant_hz real, mel real[], mfcc real[]
) ON COMMIT DROP
"""
_AS_CHUNKS = """
INSERT INTO chunk_frames
SELECT sensor_id, min(ts), seq, max(ts), $1::timestamptz, count(*), array_agg(ts ORDER BY ts),
       array_agg(rms ORDER BY ts), array_agg(zcr ORDER BY ts), array_agg(centroid ORDER BY ts),
       array_agg(bandwidth ORDER BY ts), array_agg(rolloff ORDER BY ts),
       array_agg(flatness ORDER BY ts), array_agg(dominant_hz ORDER BY ts),
       array_concat_agg(mel ORDER BY ts), array_concat_agg(mfcc ORDER BY ts)
FROM frames_in GROUP BY sensor_id, seq;
"""
_SPAN = """
UPDATE frame_span
SET longest = greatest(longest, (SELECT max(last_ts - start_ts) FROM chunk_frames))
"""


async def insert_frames(pool: asyncpg.Pool, rows_sql: str, *args: Any) -> None:
    """Store the frames ``rows_sql`` (a SELECT or VALUES) gives."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_STAGE)
        await conn.execute(f"INSERT INTO frames_in {rows_sql}", *args)
        await conn.execute(_AS_CHUNKS, T0)
        await conn.execute(_SPAN)


async def add_frames(pool: asyncpg.Pool, sensor_id: str, count: int) -> None:
    await insert_frames(
        pool,
        """
        SELECT $1, $2::timestamptz + i * $3::interval, i / 31, i / 4.0, 0.5, 1000 + i, 200,
               3000, 0.125, 440,
               ARRAY(SELECT (i + k / 4.0)::real FROM generate_series(0, 31) AS k),
               ARRAY(SELECT (-k)::real FROM generate_series(0, 12) AS k)
        FROM generate_series(0, $4 - 1) AS i
        """,
        sensor_id,
        T0,
        HOP,
        count,
    )


async def add_sensor(
    pool: asyncpg.Pool,
    sensor_id: str,
    seqs: list[int],
    *,
    frames: int = 0,
    received_at: datetime = T0,
) -> None:
    await pool.execute(
        """INSERT INTO chunks SELECT $1, s, $2, 16000, 16000, 31, $2
           FROM unnest($3::bigint[]) AS s""",
        sensor_id,
        T0,
        seqs,
    )
    await pool.execute(
        "INSERT INTO sensors VALUES ($1, $2, $3, $4, $5, $6, $7)",
        sensor_id,
        ts(0) if frames else None,
        ts(frames - 1) if frames else None,
        len(seqs),
        frames,
        max(seqs),
        received_at,
    )


def assert_problem(
    response: httpx.Response, status: int, parameter: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == "about:blank"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert body.get("parameter") == parameter
    return body


# --- sensors ----------------------------------------------------------------------


async def test_lists_sensors(pool: asyncpg.Pool, client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/sensors")).json() == {"sensors": [], "next": None}
    await add_sensor(pool, "mic-2", [0, 1], frames=62)
    await add_sensor(pool, "mic-1", [0])  # a chunk too short for a frame
    answer = await client.get("/v1/sensors")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {
        "sensors": [
            {"sensor_id": "mic-1", "first_ts": None, "last_ts": None, "chunks": 1, "frames": 0},
            {
                "sensor_id": "mic-2",
                "first_ts": "2026-01-01T00:00:00.000000Z",
                "last_ts": "2026-01-01T00:00:01.952000Z",
                "chunks": 2,
                "frames": 62,
            },
        ],
        "next": None,
    }


async def test_the_sensor_list_pages_in_id_order(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    names = [f"mic-{k:02d}" for k in range(7)]
    for name in reversed(names):
        await add_sensor(pool, name, [0])
    seen: list[str] = []
    token = None
    while True:
        answer = await client.get(
            "/v1/sensors", params={"limit": 3, **({"cursor": token} if token else {})}
        )
        assert answer.status_code == 200
        body = answer.json()
        seen += [sensor["sensor_id"] for sensor in body["sensors"]]
        token = body["next"]
        if token is None:
            assert "link" not in answer.headers
            break
        assert answer.headers["x-next-cursor"] == token
    assert seen == names
    for bad in ("0", "1001", "x"):
        assert_problem(await client.get(f"/v1/sensors?limit={bad}"), 400, "limit")
    assert_problem(await client.get("/v1/sensors?cursor=a%20b"), 400, "cursor")


async def test_status_reports_missing_seq_ranges(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    received = T0 + timedelta(seconds=5, microseconds=7)
    await add_sensor(pool, "mic-1", [0, 1, 2, 5, 6, 9], frames=10, received_at=received)
    await add_sensor(pool, "late", [3, 4, 8])
    await add_sensor(pool, "whole", [0, 1, 2])
    status = (await client.get("/v1/sensors/mic-1")).json()
    assert status == {
        "sensor_id": "mic-1",
        "first_ts": "2026-01-01T00:00:00.000000Z",
        "last_ts": "2026-01-01T00:00:00.288000Z",
        "chunks": 6,
        "frames": 10,
        "last_seq": 9,
        "missing_seq": [[3, 4], [7, 8]],
        "last_received_at": "2026-01-01T00:00:05.000007Z",
    }
    assert (await client.get("/v1/sensors/late")).json()["missing_seq"] == [[0, 2], [5, 7]]
    assert (await client.get("/v1/sensors/whole")).json()["missing_seq"] == []


async def test_missing_seq_ranges_are_capped(pool: asyncpg.Pool, client: httpx.AsyncClient) -> None:
    cap = read.MAX_MISSING_RANGES
    await add_sensor(pool, "lossy", list(range(0, 2 * cap + 10, 2)))  # every odd seq lost
    missing = (await client.get("/v1/sensors/lossy")).json()["missing_seq"]
    assert len(missing) == cap
    assert missing[0] == [1, 1] and missing[-1] == [2 * cap - 1, 2 * cap - 1]


async def test_unknown_and_invalid_sensors(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/sensors/nobody"), 404)
    assert_problem(await client.get("/v1/sensors/no%20body"), 400, "sensor_id")
    assert_problem(await client.get("/v1/sensors/" + "x" * 65), 400, "sensor_id")


# --- features ---------------------------------------------------------------------


async def test_features_are_the_exact_rows(pool: asyncpg.Pool, client: httpx.AsyncClient) -> None:
    await add_frames(pool, "mic-1", 20)
    await add_frames(pool, "mic-2", 20)
    # start inclusive, end exclusive; both given with an offset.
    start = (ts(3) + timedelta(hours=1)).isoformat().replace("+00:00", "+01:00")
    answer = await client.get(
        "/v1/sensors/mic-1/features",
        params={"start": start, "end": iso(ts(7))},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "sensor_id": "mic-1",
        "frames": [expected_frame(i) for i in range(3, 7)],
        "next": None,
    }
    assert "link" not in answer.headers and "x-next-cursor" not in answer.headers


async def test_features_render_reals_at_their_own_precision(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    await insert_frames(
        pool,
        """VALUES ('mic-1', $1::timestamptz, 0, 0.1234, 0.1, 1e-7, 3.4e38, 1, 1, 1,
                   '{0.3}'::real[], '{-0.7}'::real[])""",
        T0,
    )
    answer = await client.get(
        "/v1/sensors/mic-1/features", params={"start": iso(T0), "end": iso(ts(1))}
    )
    assert answer.text.startswith(
        '{"sensor_id":"mic-1","frames":[{"ts":"2026-01-01T00:00:00.000000Z","rms":0.1234,'
        '"zcr":0.1,"centroid":1e-7,"bandwidth":3.4e+38,'
    )
    assert '"mel":[0.3],"mfcc":[-0.7]' in answer.text


async def test_unknown_sensor_has_an_empty_page(client: httpx.AsyncClient) -> None:
    answer = await client.get(
        "/v1/sensors/nobody/features", params={"start": iso(T0), "end": iso(ts(100))}
    )
    assert answer.json() == {"sensor_id": "nobody", "frames": [], "next": None}


async def walk(
    client: httpx.AsyncClient, path: str, params: dict[str, str]
) -> tuple[list[str], int]:
    """Every ts of a paged query in JSON, following ``next``; and the page count."""
    seen: list[str] = []
    pages = 0
    token: str | None = None
    while True:
        answer = await client.get(path, params={**params, **({"cursor": token} if token else {})})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        pages += 1
        seen += [frame["ts"] for frame in page["frames"]]
        token = page["next"]
        if token is None:
            return seen, pages
        assert answer.headers["x-next-cursor"] == token


async def test_pagination_walks_a_range_without_gaps_or_repeats(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    await add_frames(pool, "mic-1", 2500)
    path = "/v1/sensors/mic-1/features"
    everything = {"start": iso(T0), "end": iso(ts(2500)), "limit": "300", "fields": "rms"}
    seen, pages = await walk(client, path, everything)
    assert seen == [iso(ts(i)) for i in range(2500)]
    assert pages == 9
    # A range that is a whole number of pages ends with next: null, not an empty page;
    # a start one microsecond after a frame leaves that frame out.
    inner = {**everything, "start": iso(ts(9) + timedelta(microseconds=1)), "end": iso(ts(2410))}
    seen, pages = await walk(client, path, inner)
    assert seen == [iso(ts(i)) for i in range(10, 2410)]
    assert pages == 8
    # Default limit.
    seen, pages = await walk(client, path, {"start": iso(T0), "end": iso(ts(2500))})
    assert len(seen) == 2500 and pages == 3


async def test_ndjson_pages_link_to_the_next(pool: asyncpg.Pool, client: httpx.AsyncClient) -> None:
    await add_frames(pool, "mic-1", 25)
    url = f"/v1/sensors/mic-1/features?start={iso(T0)}&end={iso(ts(25))}&format=ndjson&limit=10"
    url += "&unknown=kept&fields=zcr"
    lines: list[str] = []
    pages = 0
    while url:
        answer = await client.get(url)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/x-ndjson"
        assert answer.text.endswith("\n") or answer.text == ""
        lines += answer.text.splitlines()
        pages += 1
        link = answer.headers.get("link")
        if link is None:
            assert "x-next-cursor" not in answer.headers
            break
        match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
        assert match is not None
        url = match[1]
        target = urlsplit(url)
        assert target.path == "/v1/sensors/mic-1/features"
        query = dict(parse_qsl(target.query))
        assert query["cursor"] == answer.headers["x-next-cursor"]
        assert query["format"] == "ndjson" and query["unknown"] == "kept"
    assert pages == 3
    assert [httpx.Response(200, content=line).json() for line in lines] == [
        {"ts": iso(ts(i)), "zcr": 0.5} for i in range(25)
    ]


async def test_csv(pool: asyncpg.Pool, client: httpx.AsyncClient) -> None:
    await add_frames(pool, "mic-1", 3)
    # A frame stored with fewer mel bands than configured gets empty cells.
    await insert_frames(
        pool,
        """VALUES ('mic-1', $1::timestamptz, 9, 1, 1, 1, 1, 1, 1, 1,
                   '{0.5,1.5}'::real[], '{}'::real[])""",
        ts(3),
    )
    answer = await client.get(
        "/v1/sensors/mic-1/features",
        params={"start": iso(T0), "end": iso(ts(9)), "format": "csv", "limit": "3"},
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/csv")
    rows = answer.text.split("\r\n")
    assert rows[-1] == ""
    header = rows[0].split(",")
    mel = [f"mel_{k}" for k in range(API.n_mels)]
    mfcc = [f"mfcc_{k}" for k in range(API.n_mfcc)]
    assert header == ["ts", *SCALARS, *mel, *mfcc]
    assert len(rows) == 1 + 3 + 1
    for i, row in enumerate(rows[1:4]):
        frame = expected_frame(i)
        cells = [frame["ts"], *(frame[name] for name in SCALARS), *frame["mel"], *frame["mfcc"]]
        assert row.split(",") == [cells[0], *(repr(float(c)) for c in cells[1:])]
    assert answer.headers["x-next-cursor"]

    link = re.fullmatch(r'<([^>]+)>; rel="next"', answer.headers["link"])
    assert link is not None
    last = await client.get(link[1])
    rows = last.text.split("\r\n")
    assert rows[0].split(",") == header and len(rows) == 3
    cells = rows[1].split(",")
    assert cells[0] == iso(ts(3))
    assert cells[8:10] == ["0.5", "1.5"] and cells[10:] == [""] * (len(header) - 10)
    assert "link" not in last.headers
    # JSON carries such a frame's arrays whole.
    ragged = await client.get(
        "/v1/sensors/mic-1/features",
        params={"start": iso(ts(2)), "end": iso(ts(9)), "fields": "mel,mfcc"},
    )
    assert [(f["mel"][:2], len(f["mel"]), f["mfcc"]) for f in ragged.json()["frames"]] == [
        ([2.0, 2.25], 32, [float(-k) for k in range(13)]),
        ([0.5, 1.5], 2, []),
    ]
    only_mel = await client.get(
        "/v1/sensors/mic-1/features",
        params={"start": iso(ts(1)), "end": iso(ts(2)), "format": "csv", "fields": "mel"},
    )
    assert (
        only_mel.text
        == ",".join(["ts", *mel])
        + "\r\n"
        + ",".join([iso(ts(1)), *(repr(1 + k / 4) for k in range(32))])
        + "\r\n"
    )
    only_ts = await client.get(
        "/v1/sensors/mic-1/features",
        params={"start": iso(ts(1)), "end": iso(ts(3)), "format": "csv", "fields": "ts"},
    )
    assert only_ts.text == f"ts\r\n{iso(ts(1))}\r\n{iso(ts(2))}\r\n"

    selected = await client.get(
        "/v1/sensors/mic-1/features",
        params={"start": iso(T0), "end": iso(ts(1)), "format": "csv", "fields": "mfcc,zcr"},
    )
    assert (
        selected.text
        == ",".join(["ts", "zcr", *mfcc])
        + "\r\n"
        + ",".join([iso(T0), "0.5", *(repr(float(-k)) for k in range(13))])
        + "\r\n"
    )


async def test_csv_of_an_empty_page_is_its_header(client: httpx.AsyncClient) -> None:
    answer = await client.get(
        "/v1/sensors/nobody/features",
        params={"start": iso(T0), "end": iso(ts(1)), "format": "csv", "fields": "rms"},
    )
    assert answer.text == "ts,rms\r\n"


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("fields=rms,mel", ["rms", "mel"]),
        ("fields=mfcc,rms,,rms", ["rms", "mfcc"]),  # canonical order, blanks and repeats dropped
        ("fields=%20dominant_hz%20,ts", ["dominant_hz"]),
        ("fields=ts", []),
        ("fields=rms&fields=zcr", ["rms", "zcr"]),
        ("fields=", [*SCALARS, "mel", "mfcc"]),
        ("", [*SCALARS, "mel", "mfcc"]),
    ],
)
async def test_fields_choose_columns(
    pool: asyncpg.Pool, client: httpx.AsyncClient, query: str, fields: list[str]
) -> None:
    await add_frames(pool, "mic-1", 2)
    answer = await client.get(
        f"/v1/sensors/mic-1/features?start={iso(T0)}&end={iso(ts(2))}&{query}"
    )
    frames = answer.json()["frames"]
    assert frames == [expected_frame(i, fields) for i in range(2)]
    assert [list(frame) for frame in frames] == [["ts", *fields]] * 2


GOOD = f"start={iso(T0)}&end={iso(ts(10))}"
CURSORS = cursor.Cursors(API.cursor_secret)


def cursor_for(sensor_id: str, start: datetime, end: datetime, after: datetime) -> str:
    scope = cursor.Scope((sensor_id,), to_micros(start), to_micros(end))
    return CURSORS.encode(scope, cursor.Position(to_micros(after)))


FOREIGN_CURSOR = cursor_for("mic-1", T0 - HOP, ts(10), T0)
FORGED_CURSOR = cursor.Cursors(b"another key, not the API's").encode(
    cursor.Scope(("mic-1",), to_micros(T0), to_micros(ts(10))), cursor.Position(to_micros(T0))
)


@pytest.mark.parametrize(
    ("path", "query", "parameter"),
    [
        ("mic-1", f"end={iso(ts(10))}", "start"),
        ("mic-1", f"start=&end={iso(ts(10))}", "start"),
        ("mic-1", f"start=yesterday&end={iso(ts(10))}", "start"),
        ("mic-1", f"start=2026-01-01T00:00:00&end={iso(ts(10))}", "start"),
        ("mic-1", f"start=2026-02-30T00:00:00Z&end={iso(ts(10))}", "start"),
        ("mic-1", f"start={iso(T0)}&start={iso(ts(1))}&end={iso(ts(10))}", "start"),
        ("mic-1", f"start={iso(T0)}", "end"),
        ("mic-1", f"start={iso(T0)}&end=2026-01-01", "end"),
        ("mic-1", f"start={iso(T0)}&end={iso(T0)}", "end"),
        ("mic-1", f"start={iso(ts(1))}&end={iso(T0)}", "end"),
        ("mic-1", f"{GOOD}&fields=rms,loudness", "fields"),
        ("mic-1", f"{GOOD}&fields=RMS", "fields"),
        ("mic-1", f"{GOOD}&fields=rms;zcr", "fields"),
        ("mic-1", f"{GOOD}&limit=0", "limit"),
        ("mic-1", f"{GOOD}&limit=10001", "limit"),
        ("mic-1", f"{GOOD}&limit=abc", "limit"),
        ("mic-1", f"{GOOD}&limit=-1", "limit"),
        ("mic-1", f"{GOOD}&limit=1.5", "limit"),
        ("mic-1", f"{GOOD}&limit=%2B5", "limit"),
        ("mic-1", f"{GOOD}&limit=1&limit=2", "limit"),
        ("mic-1", f"{GOOD}&cursor=not-a-cursor", "cursor"),
        ("mic-1", f"{GOOD}&cursor={FOREIGN_CURSOR}", "cursor"),
        ("mic-2", f"{GOOD}&cursor={cursor_for('mic-1', T0, ts(10), T0)}", "cursor"),
        ("mic-1", f"{GOOD}&cursor={FORGED_CURSOR}", "cursor"),
        ("mic-1", f"{GOOD}&format=xml", "format"),
        ("mic-1", f"{GOOD}&format=JSON", "format"),
        ("mic%201", GOOD, "sensor_id"),
        ("mic%C3%A9", GOOD, "sensor_id"),
        ("m" * 65, GOOD, "sensor_id"),
    ],
)
async def test_bad_parameters_are_named(
    offline_client: httpx.AsyncClient, path: str, query: str, parameter: str
) -> None:
    assert_problem(await offline_client.get(f"/v1/sensors/{path}/features?{query}"), 400, parameter)


async def test_cursor_from_another_query_is_refused(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    await add_frames(pool, "mic-1", 10)
    first = await client.get(f"/v1/sensors/mic-1/features?{GOOD}&limit=2")
    token = first.json()["next"]
    assert token
    moved = f"start={iso(ts(1))}&end={iso(ts(10))}&cursor={token}"
    body = assert_problem(await client.get(f"/v1/sensors/mic-1/features?{moved}"), 400, "cursor")
    assert "different query" in body["detail"]
    # Changing limit, fields or format between pages is fine.
    follow = await client.get(
        f"/v1/sensors/mic-1/features?{GOOD}&cursor={token}&limit=5&fields=rms"
    )
    assert [f["ts"] for f in follow.json()["frames"]] == [iso(ts(i)) for i in range(2, 7)]


async def asgi_get(app: Starlette, path: str, query: bytes) -> int:
    """Status of a request whose raw query bytes no HTTP client would send."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"t")],
        "client": ("127.0.0.1", 1),
        "server": ("t", 80),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


async def test_no_request_gets_a_5xx(pool: asyncpg.Pool) -> None:
    app = api.create_app(API, pool=pool, ready=ready_ok)
    huge = "9" * 20_000  # clients and servers cap URLs near here
    queries_ = [
        f"start=%FF%FE&end={iso(ts(1))}",
        f"{GOOD}&fields=%FF,%00,rms",
        f"{GOOD}&cursor=%FF%FE%00",
        f"{GOOD}&format=%00",
        f"start={huge}&end={huge}",
        f"{GOOD}&limit={huge}",
        f"{GOOD}&fields={'rms,' * 5_000}",
        f"{GOOD}&cursor={'A' * 20_000}",
        f"{GOOD}&{GOOD}",
        f"{GOOD}&x=1&x=2&=&&&==",
        "start=0001-01-01T00:00:00Z&end=9999-12-31T23:59:59.999999Z",
        "start=0001-01-01T00:00:00Z&end=9999-12-31T23:59:59.999999Z&limit=10000",
        f"{GOOD}&limit=00000000001",
    ]
    async with client_for(app) as client:
        for query in queries_:
            for path in ("mic-1", "%FF", "..", "a%2Fb"):
                answer = await client.get(f"/v1/sensors/{path}/features?{query}")
                assert answer.status_code < 500, (path, query[:80], answer.text)
        for path in ("/v1/sensors/%FF", "/v1/sensors/%00", "/v1//sensors", "/v1/", "/v2"):
            assert (await client.get(path)).status_code < 500, path
    for raw in (b"start=\xff\xfe&end=\x00", b"fields=\xc3&" + GOOD.encode(), b"%%%&&=="):
        assert await asgi_get(app, "/v1/sensors/mic-1/features", raw) == 400


async def test_database_outage_is_503(offline_client: httpx.AsyncClient) -> None:
    answer = await offline_client.get("/v1/sensors")
    assert_problem(answer, 503)
    assert answer.headers["retry-after"]


async def test_unexpected_errors_are_500_problems() -> None:
    app = api.create_app(API, pool=object(), ready=ready_ok)  # a "pool" that cannot fetch
    async with client_for(app, raise_app_exceptions=False) as client:
        assert_problem(await client.get("/v1/sensors"), 500)


async def test_routing_errors_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nowhere"), 404)
    answer = await client.post("/v1/sensors")
    assert_problem(answer, 405)
    assert "GET" in answer.headers["allow"]


# --- auth -------------------------------------------------------------------------


async def test_bearer_keys_guard_v1_only(pool: asyncpg.Pool) -> None:
    settings = config.replace(API, api_key_digests=digests(KEY, OTHER_KEY))
    app = api.create_app(settings, pool=pool, ready=ready_ok)
    async with client_for(app) as client:
        for authorization in (
            None,
            b"Bearer wrong-key-0123456789",
            f"Bearer {KEY}x".encode(),
            f"Basic {KEY}".encode(),
            KEY.encode(),
            b"Bearer",
            b"Bearer \xe9\xff",
        ):
            headers = [] if authorization is None else [(b"authorization", authorization)]
            for path in ("/v1/sensors", "/v1/sensors/mic-1", "/v1/nowhere"):
                answer = await client.get(path, headers=headers)
                assert_problem(answer, 401)
                assert answer.headers["www-authenticate"].startswith("Bearer")
        for key in (KEY, OTHER_KEY):
            for scheme in ("Bearer", "bearer"):
                answer = await client.get(
                    "/v1/sensors", headers={"Authorization": f"{scheme} {key}"}
                )
                assert answer.status_code == 200
        authorized = {"Authorization": f"Bearer {KEY}"}
        assert_problem(await client.get("/v1/nowhere", headers=authorized), 404)
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert (await client.get(path)).status_code == 200


async def test_without_keys_v1_is_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/sensors")).status_code == 200
    answer = await client.get("/v1/sensors", headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 200


# --- health, readiness, roles -----------------------------------------------------


async def test_health_and_readiness() -> None:
    moments = iter(range(1_767_225_600, 1_767_225_700))
    status = Status(clock=lambda: float(next(moments)))
    status.expect("broker", "database")

    async def ready() -> Readiness:
        return Readiness(status.problems(), status.checks())

    app = api.create_app(config.load({}, roles=frozenset({"ingest"})), pool=None, ready=ready)
    async with client_for(app) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        status.up("broker")
        status.up("database")
        assert (await client.get("/readyz")).json() == {
            "status": "ready",
            "checks": {
                "broker": {"state": "up", "since": "2026-01-01T00:00:02.000000Z"},
                "database": {"state": "up", "since": "2026-01-01T00:00:03.000000Z"},
            },
        }
        status.down("broker", "connection refused")
        body = assert_problem(await client.get("/readyz"), 503)
        assert body["reasons"] == ["broker: connection refused"]
        assert "broker: connection refused" in body["detail"]
        assert body["checks"]["broker"] == {
            "state": "down",
            "since": "2026-01-01T00:00:04.000000Z",
            "reason": "connection refused",
        }
        assert body["checks"]["database"]["state"] == "up"
        assert (await client.get("/healthz")).status_code == 200


async def test_a_failing_readiness_check_is_not_ready() -> None:
    async def ready() -> Readiness:
        raise ConnectionResetError

    app = api.create_app(API, pool=object(), ready=ready)
    async with client_for(app) as client:
        body = assert_problem(await client.get("/readyz"), 503)
    assert "ConnectionResetError" in body["reasons"][0]


async def test_ingest_only_serves_no_v1() -> None:
    settings = config.load({}, roles=frozenset({"ingest"}), api_key_digests=digests(KEY))
    app = api.create_app(settings, pool=None, ready=ready_ok)
    async with client_for(app) as client:
        for path in ("/v1/sensors", "/v1/sensors/mic-1", "/v1/sensors/mic-1/features"):
            assert_problem(await client.get(path), 404)
        document = (await client.get("/openapi.json")).json()
    assert not [path for path in document["paths"] if path.startswith("/v1")]
    assert document == openapi.document(settings)


def test_api_role_needs_a_pool() -> None:
    with pytest.raises(ValueError, match="pool"):
        api.create_app(API, pool=None, ready=ready_ok)


# --- OpenAPI ----------------------------------------------------------------------


def served_operations(app: Starlette) -> set[tuple[str, str]]:
    found = set()
    for route in app.routes:
        children = route.routes if isinstance(route, Mount) else [route]
        prefix = route.path if isinstance(route, Mount) else ""
        for child in children:
            assert isinstance(child, Route)
            for method in child.methods or ():
                if method != "HEAD":
                    found.add((prefix + child.path, method.lower()))
    return found


def parameters_read_by(module: ModuleType) -> set[str]:
    """Names the handlers read: path_params[...] and the query helpers' literal names."""
    tree = ast.parse(inspect.getsource(module))
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "path_params"
            and isinstance(node.slice.value, str)
        ):
            names.add(node.slice.value)
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            literal = [
                a.value
                for a in node.args
                if isinstance(a, ast.Constant) and isinstance(a.value, str)
            ]
            if name in {"one", "_timestamp", "getlist", "bounded_int"} and literal:
                names.add(literal[0])
    return names


def resolve(document: dict[str, Any], node: Any) -> Any:
    if isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return target
    return node


def all_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [ref for value in node.values() for ref in all_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in all_refs(value)]
    return []


async def test_openapi_describes_every_route(pool: asyncpg.Pool) -> None:
    settings = config.replace(API, api_key_digests=digests(KEY))
    app = api.create_app(settings, pool=pool, ready=ready_ok)
    async with client_for(app) as client:
        answer = await client.get("/openapi.json")
    assert answer.headers["content-type"] == "application/json"
    document = answer.json()
    assert document == openapi.document(settings)

    assert document["openapi"] == "3.1.0"
    assert isinstance(document["info"]["title"], str) and isinstance(
        document["info"]["version"], str
    )
    for ref in all_refs(document):
        assert ref.startswith("#/components/"), ref
        resolve(document, {"$ref": ref})  # raises KeyError when dangling

    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert operations == served_operations(app)
    operation_ids = []
    declared: set[str] = set()
    for path, item in document["paths"].items():
        for operation in item.values():
            operation_ids.append(operation["operationId"])
            parameters = [resolve(document, p) for p in operation.get("parameters", [])]
            for parameter in parameters:
                assert parameter["in"] in {"path", "query"} and "schema" in parameter
                declared.add(parameter["name"])
            in_path = {p["name"] for p in parameters if p["in"] == "path"}
            assert in_path == set(re.findall(r"{(\w+)}", path))
            assert all(p["required"] for p in parameters if p["in"] == "path")
            for status, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status)
                assert resolve(document, response)["description"]
            if path.startswith("/v1"):
                assert operation["security"] == [{"bearer": []}]
                assert {"401", "429", "503"} <= set(operation["responses"])
                for status, response in operation["responses"].items():
                    if status != "200":
                        problem = resolve(document, response)
                        assert set(problem["content"]) == {problems.MEDIA_TYPE}
    assert len(operation_ids) == len(set(operation_ids))
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for name in ("TooManyRequests", "Unavailable"):
        assert "Retry-After" in document["components"]["responses"][name]["headers"]
    assert parameters_read_by(api) <= declared


def test_openapi_describes_the_feature_routes() -> None:
    settings = config.replace(API, max_sensors=7)
    document = openapi.document(settings)
    read_by_features = parameters_read_by(feature_routes) | parameters_read_by(query)
    for path in ("/v1/sensors/{sensor_id}/features", "/v1/features"):
        operation = document["paths"][path]["get"]
        params = {p["name"]: p for p in (resolve(document, ref) for ref in operation["parameters"])}
        assert set(params) == read_by_features, path
        assert params["sensor_id"]["required"]
        assert params["start"]["required"] and params["end"]["required"]
        assert params["limit"]["schema"]["minimum"] == 1
        assert params["limit"]["schema"]["maximum"] == read.MAX_LIMIT
        assert "default" not in params["limit"]["schema"]  # JSON pages; the rest stream
        assert params["format"]["schema"]["enum"] == list(query.FORMATS)
        assert params["agg"]["schema"]["enum"] == list(query.AGGREGATES)
        assert params["fields"]["schema"]["items"]["enum"] == ["ts", *fields.FEATURE_FIELDS]
        assert re.fullmatch(params["resolution"]["schema"]["pattern"], "100ms")
        ok = operation["responses"]["200"]
        assert set(ok["content"]) == {
            media_type.split(";")[0] for media_type in feature_routes.MEDIA_TYPES.values()
        }
        assert {"Link", "X-Next-Cursor", "RateLimit-Remaining"} <= set(ok["headers"])
    several = resolve(document, document["paths"]["/v1/features"]["get"]["parameters"][0])
    assert several["in"] == "query" and several["explode"]
    assert several["schema"]["maxItems"] == settings.max_sensors


def test_openapi_without_keys_has_no_security() -> None:
    document = openapi.document(API)
    assert "securitySchemes" not in document["components"]
    for item in document["paths"].values():
        for operation in item.values():
            assert "security" not in operation and "401" not in operation["responses"]


async def test_docs_page_is_self_contained() -> None:
    app = api.create_app(config.load({}, roles=frozenset({"ingest"})), pool=None, ready=ready_ok)
    async with client_for(app) as client:
        answer = await client.get("/docs")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    page = answer.text
    assert "/openapi.json" in page
    # Nothing from another host: no absolute URL, no external script, style or image.
    assert not re.search(r"https?://", page, re.IGNORECASE)
    assert not re.search(r"\ssrc=|<link|@import|url\(", page, re.IGNORECASE)
    policy = answer.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    # The inline style and script are allowed by their hashes, and only they are.
    for tag in ("style", "script"):
        (inline,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"{tag}-src 'sha256-{digest}'" in policy


def _junk(rng: random.Random) -> str:
    """A value a careless or hostile client might send, percent-encoded or not."""
    pieces = [
        "", "0", "-1", "1e9", "10000", "10001", "nan", "rms", "mel,mfcc", "ts", "json", "csv",
        "2026-01-01T00:00:00Z", "2026-01-01T00:00:00+99:99", "2026-02-30T00:00:00Z",
        "9999-12-31T23:59:59.9999999Z", "0000-01-01T00:00:00Z", "%00", "%FF", "%E2%80%AE",
        "\u202e", "'; DROP TABLE frames; --", "eyJ2IjoxfQ", "A" * 600, ",", " ", "+",
    ]  # fmt: skip
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 3)))


async def test_random_queries_never_get_a_5xx(pool: asyncpg.Pool) -> None:
    app = api.create_app(API, pool=pool, ready=ready_ok)
    rng = random.Random(20261122)
    names = ("start", "end", "fields", "limit", "cursor", "format", "x")
    seen: set[int] = set()
    async with client_for(app) as client:
        for _ in range(400):
            params = [(rng.choice(names), _junk(rng)) for _ in range(rng.randint(0, 4))]
            # Half the time around a valid range, so accepted queries are drawn too.
            base = [GOOD] if rng.random() < 0.5 else []
            query = "&".join(base + [f"{k}={v}" for k, v in params])
            sensor = rng.choice(["mic-1", "unknown", "%FF", "a" * 65, "x y"])
            answer = await client.get(f"/v1/sensors/{sensor}/features?{query}")
            seen.add(answer.status_code)
            assert answer.status_code < 500, (sensor, query, answer.text)
            if answer.status_code >= 400:
                assert answer.headers["content-type"] == "application/problem+json"
    assert {200, 400} <= seen, seen  # both accepted and refused queries were drawn
