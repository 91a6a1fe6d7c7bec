"""The read API for dataframes and long ranges, against a real database: several
sensors in one answer, whole ranges streamed without ``limit``, Arrow and Parquet
read back by pyarrow and pandas."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import httpx
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
from test_api import (
    API,
    add_frames,
    assert_problem,
    client_for,
    insert_frames,
    iso,
    ready_ok,
    ts,
)

from soundstream import config
from soundstream.http import app as api
from soundstream.http import server

RANGE = f"start={iso(ts(0))}&end={iso(ts(100))}"


@pytest.fixture
async def client(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(api.create_app(API, pool=pool, ready=ready_ok)) as client:
        yield client


async def pages(client: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    """Every frame of every page, following ``next``."""
    frames: list[dict[str, Any]] = []
    token = None
    for _ in range(100):
        url = path + (f"&cursor={token}" if token else "")
        answer = await client.get(url)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        frames += body["frames"]
        token = body["next"]
        if token is None:
            return frames
    raise AssertionError("paging did not end")


async def test_several_sensors_come_in_ts_then_sensor_order(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    await add_frames(pool, "mic-b", 40)
    await add_frames(pool, "mic-a", 30)
    path = f"/v1/features?sensor_id=mic-b&sensor_id=mic-a&{RANGE}&fields=rms&limit=7"
    frames = await pages(client, path)
    expected = sorted(
        [(iso(ts(i)), "mic-a") for i in range(30)] + [(iso(ts(i)), "mic-b") for i in range(40)]
    )
    assert [(f["ts"], f["sensor_id"]) for f in frames] == expected
    assert list(frames[0]) == ["sensor_id", "ts", "rms"]
    # One sensor through the several-sensor route is the one-sensor answer plus ids.
    one = await pages(client, f"/v1/sensors/mic-a/features?{RANGE}&fields=rms&limit=9")
    only = await pages(client, f"/v1/features?sensor_id=mic-a&{RANGE}&fields=rms&limit=9")
    assert [{"sensor_id": "mic-a", **frame} for frame in one] == only


async def test_several_sensor_requests_are_checked(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"/v1/features?{RANGE}"), 400, "sensor_id")
    assert_problem(await client.get(f"/v1/features?sensor_id=a%20b&{RANGE}"), 400, "sensor_id")
    many = "&".join(f"sensor_id=s{k}" for k in range(API.max_sensors + 1))
    body = assert_problem(await client.get(f"/v1/features?{many}&{RANGE}"), 400, "sensor_id")
    assert str(API.max_sensors) in body["detail"]
    first = await client.get(f"/v1/features?sensor_id=a&sensor_id=b&{RANGE}&limit=1")
    assert first.status_code == 200


async def test_a_cursor_is_bound_to_its_sensors(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    await add_frames(pool, "mic-a", 10)
    await add_frames(pool, "mic-b", 10)
    answer = await client.get(f"/v1/features?sensor_id=mic-a&sensor_id=mic-b&{RANGE}&limit=3")
    token = answer.json()["next"]
    other = await client.get(f"/v1/features?sensor_id=mic-a&{RANGE}&cursor={token}")
    assert "different query" in assert_problem(other, 400, "cursor")["detail"]


@pytest.mark.parametrize("form", ["ndjson", "csv"])
async def test_without_limit_a_text_stream_holds_the_whole_range(
    pool: asyncpg.Pool, client: httpx.AsyncClient, form: str
) -> None:
    await add_frames(pool, "mic-a", 12_000)  # more than two streaming steps
    end = iso(ts(12_000))
    async with client.stream(
        "GET", f"/v1/sensors/mic-a/features?start={iso(ts(0))}&end={end}&format={form}&fields=rms"
    ) as answer:
        assert answer.status_code == 200
        assert "x-next-cursor" not in answer.headers
        body = b"".join([piece async for piece in answer.aiter_bytes()])
    lines = body.decode().splitlines()
    if form == "csv":
        assert lines[0] == "ts,rms" and lines.count("ts,rms") == 1
        lines = lines[1:]
        stamps = [line.split(",")[0] for line in lines]
    else:
        stamps = [orjson.loads(line)["ts"] for line in lines]
    assert stamps == [iso(ts(i)) for i in range(12_000)]


async def test_json_still_pages_without_limit(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    await add_frames(pool, "mic-a", 1500)
    answer = await client.get(f"/v1/sensors/mic-a/features?start={iso(ts(0))}&end={iso(ts(2000))}")
    body = answer.json()
    assert len(body["frames"]) == 1000 and body["next"]


async def test_arrow_and_parquet_read_back_typed(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    await add_frames(pool, "mic-a", 50)
    await add_frames(pool, "mic-b", 50)
    path = f"/v1/features?sensor_id=mic-a&sensor_id=mic-b&{RANGE}"
    arrow = await client.get(f"{path}&format=arrow")
    assert arrow.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(arrow.content).read_all()
    assert table.num_rows == 100
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("rms").type == pa.float32()
    assert table.schema.field("mel").type == pa.list_(pa.float32(), API.n_mels)
    parquet = await client.get(f"{path}&format=parquet&fields=rms,mfcc")
    assert parquet.headers["content-type"] == "application/vnd.apache.parquet"
    frame = pd.read_parquet(io.BytesIO(parquet.content))
    assert list(frame.columns) == ["sensor_id", "ts", "rms", "mfcc"]
    assert len(frame) == 100
    assert frame["rms"].iloc[2] == pytest.approx(1 / 4)  # frame 1 of mic-a: i / 4
    assert pq.read_table(io.BytesIO(parquet.content)).schema.field("mfcc").type == pa.list_(
        pa.float32(), API.n_mfcc
    )
    # A page with limit, and an empty range, are valid files too.
    paged = await client.get(f"{path}&format=parquet&limit=10")
    assert pq.read_table(io.BytesIO(paged.content)).num_rows == 10
    assert paged.headers["x-next-cursor"]
    empty = await client.get(f"/v1/sensors/nobody/features?{RANGE}&format=arrow&fields=rms")
    assert pa.ipc.open_stream(empty.content).read_all().num_rows == 0


async def test_a_stream_longer_than_allowed_is_refused(client: httpx.AsyncClient) -> None:
    long = f"start={iso(ts(0))}&end=2026-03-01T00:00:00Z"
    body = assert_problem(
        await client.get(f"/v1/sensors/mic-a/features?{long}&format=ndjson"), 400, "end"
    )
    assert "streamed" in body["detail"]
    paged = await client.get(f"/v1/sensors/mic-a/features?{long}&format=ndjson&limit=10")
    assert paged.status_code == 400  # more than max_range_s too


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def test_streaming_an_hour_of_48k_frames_keeps_memory_flat(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    # An hour of a 48 kHz sensor: 337,500 frames of 512 samples, in 1 s chunks.
    frames = 337_500
    await insert_frames(
        pool,
        """
        SELECT 'mic-48k', $1::timestamptz + i * interval '10667 microseconds', i / 94, i / 4.0,
               0.5, 1000 + i, 200, 3000, 0.125, 440,
               ARRAY(SELECT (i + k / 4.0)::real FROM generate_series(0, 31) AS k),
               ARRAY(SELECT (-k)::real FROM generate_series(0, 12) AS k)
        FROM generate_series(0, $2 - 1) AS i
        """,
        ts(0),
        frames,
    )
    query = f"start={iso(ts(0))}&end=2026-01-01T01:00:05Z&format=ndjson"
    # Through a real server and socket: the in-process test transport would buffer
    # the whole answer itself.
    app = api.create_app(API, pool=pool, ready=ready_ok)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        port = await tg.start(server.run, config.replace(API, http_port=0), app, stop)
        before = rss_bytes()
        highest, lines, size = before, 0, 0
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http,
            http.stream("GET", f"/v1/sensors/mic-48k/features?{query}") as answer,
        ):
            assert answer.status_code == 200
            quarter = None
            async for piece in answer.aiter_bytes():
                lines += piece.count(b"\n")
                size += len(piece)
                highest = max(highest, rss_bytes())
                if quarter is None and lines >= frames // 4:
                    quarter = highest
        stop.set()
    assert lines == frames
    # Hundreds of MB went out; the process grew by a few pages' worth at most.
    assert size > 150 * 2**20
    assert highest - before < 64 * 2**20, (before, highest, size)
    # ... and what it holds does not grow with the range: the last three quarters
    # of the hour added next to nothing.
    assert quarter is not None and highest - quarter < 16 * 2**20, (quarter, highest)
    grew = (highest - before) / 2**20
    print(f"\n[stream] {size / 2**20:.0f} MiB in {lines} lines; RSS grew {grew:.1f} MiB")


async def test_downsampled_pages_follow_on_from_a_mid_bucket_start(
    pool: asyncpg.Pool, client: httpx.AsyncClient
) -> None:
    await add_frames(pool, "mic-a", 200)  # 6.4 s of frames, 32 ms apart
    await add_frames(pool, "mic-b", 100)
    # start 0.5 s into the first second: its bucket still starts on the second.
    window = "start=2026-01-01T00:00:00.5Z&end=2026-01-01T00:00:07Z&resolution=1s&fields=rms"
    whole = (await client.get(f"/v1/sensors/mic-a/features?{window}")).json()["frames"]
    assert [row["ts"] for row in whole] == [f"2026-01-01T00:00:0{k}.000000Z" for k in range(7)]
    assert all(list(row) == ["ts", "count", "rms"] for row in whole)
    assert sum(row["count"] for row in whole) == 200 - 16  # frames before 0.5 s left out
    one_by_one = await pages(client, f"/v1/sensors/mic-a/features?{window}&limit=1")
    assert one_by_one == whole
    both = await pages(client, f"/v1/features?sensor_id=mic-a&sensor_id=mic-b&{window}&limit=2")
    assert [(row["ts"][:19], row["sensor_id"]) for row in both] == sorted(
        [(row["ts"][:19], "mic-a") for row in whole]
        + [(f"2026-01-01T00:00:0{k}", "mic-b") for k in range(4)]
    )
    assert_problem(
        await client.get(f"/v1/sensors/mic-a/features?{window}&fields=mel"), 400, "fields"
    )
    assert_problem(await client.get(f"/v1/sensors/mic-a/features?{window}&agg=median"), 400, "agg")
    assert_problem(
        await client.get(f"/v1/sensors/mic-a/features?{window.replace('1s', '10us')}"),
        400,
        "resolution",
    )
