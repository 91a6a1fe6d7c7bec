"""``GET /v1/sensors/{sensor_id}/live`` against real servers: API replicas run by the
supervisor (uvicorn, the LISTEN connection), chunks written by the real write path
(and, across replicas, by a real ingest replica fed over AMQP)."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg
import httpx
import orjson
import pytest
from anyio.abc import TaskStatus
from support import Service, channel, publish_series, running, stored_at_least, wait_for
from test_api import API, KEY, client_for, digests, ready_ok
from test_observability import scrape
from test_store import extracted

from soundstream import config
from soundstream.core.records import Extracted
from soundstream.http.app import create_app
from soundstream.store.write import init_connection, write_batch

pytestmark = pytest.mark.slow

NO_BROKER = "amqp://nobody:x@127.0.0.1:1/"


def api_only(settings: config.Settings, **changes: Any) -> config.Settings:
    return config.replace(settings, roles=frozenset({"api"}), amqp_url=NO_BROKER, **changes)


@dataclass
class Event:
    event: str
    id: str | None
    data: Any

    @property
    def seq_id(self) -> int | None:
        """The id's seq: the highest sent (the id may go on with ``;holes``)."""
        return None if self.id is None else int(self.id.split(";")[0])


@dataclass
class Stream:
    """One SSE client: the events it got, and a way to wait for more."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    status: int = 0
    ended: bool = False
    _changed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def chunks(self) -> list[Event]:
        return [e for e in self.events if e.event == "chunk"]

    async def run(self, *, task_status: TaskStatus[httpx.Response]) -> None:
        async with (
            httpx.AsyncClient(timeout=30) as client,
            client.stream("GET", self.url, headers=self.headers) as response,
        ):
            self.status = response.status_code
            task_status.started(response)
            lines: list[str] = []
            async for line in response.aiter_lines():
                if line:
                    lines.append(line)
                    continue
                if any(not text.startswith((":", "retry:")) for text in lines):
                    self.events.append(_parse(lines))
                    self._changed.set()
                lines = []
        self.ended = True
        self._changed.set()

    async def wait_for(self, done: Callable[[Stream], bool], within: float = 15) -> None:
        with anyio.fail_after(within):
            while not done(self):
                if self.ended:
                    raise AssertionError(f"the stream ended first: {self.events[-3:]}")
                self._changed = anyio.Event()
                await self._changed.wait()

    async def wait_ended(self, within: float) -> None:
        with anyio.fail_after(within):
            while not self.ended:
                self._changed = anyio.Event()
                await self._changed.wait()


def _parse(lines: list[str]) -> Event:
    fields: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(": ")
        fields[name] = value
    data = orjson.loads(fields["data"]) if "data" in fields else None
    return Event(fields.get("event", "message"), fields.get("id"), data)


@asynccontextmanager
async def streaming(
    service: Service, sensor: str, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[Stream]:
    """A stream open (headers received) for the block; closed after it."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    url = f"http://127.0.0.1:{service.port}/v1/sensors/{sensor}/live?{query}"
    stream = Stream(url, headers or {})
    async with anyio.create_task_group() as tg:
        await tg.start(stream.run)
        yield stream
        tg.cancel_scope.cancel()


class Writer:
    """Batches through the real write path (announcements included)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def write(self, *chunks: Extracted) -> None:
        await write_batch(self.conn, list(chunks))


@pytest.fixture
async def writer(database: str) -> AsyncIterator[Writer]:
    conn = await asyncpg.connect(database)
    await init_connection(conn)
    try:
        yield Writer(conn)
    finally:
        await conn.close()


def ids(stream: Stream) -> list[int | None]:
    return [e.seq_id for e in stream.chunks]


# --- one replica --------------------------------------------------------------------


async def test_each_committed_chunk_is_one_event_with_its_stored_frames(
    settings: config.Settings, writer: Writer
) -> None:
    await writer.write(extracted("mic-1", 0))
    async with running(api_only(settings)) as service:
        async with (
            streaming(service, "mic-1") as stream,
            streaming(service, "mic-1", fields="rms,dominant_hz") as some,
        ):
            assert stream.status == 200
            await writer.write(extracted("mic-1", 1), extracted("other", 0))
            await writer.write(extracted("mic-1", 2))
            await stream.wait_for(lambda s: len(s.chunks) == 2)
            await some.wait_for(lambda s: len(s.chunks) == 2)
        assert ids(stream) == [1, 2]  # not seq 0, committed before it opened
        for event in stream.chunks:
            assert event.data["sensor_id"] == "mic-1" and event.data["seq"] == event.seq_id
            frames = event.data["frames"]
            # The same frames, numbers and names as the JSON feature answer gives.
            answer = await service.get(
                "/v1/sensors/mic-1/features",
                start=frames[0]["ts"],
                end=frames[-1]["ts"].replace("Z", "1Z"),  # one digit more: just after
            )
            assert answer.json()["frames"] == frames
            assert len(frames) == extracted("mic-1", event.data["seq"]).frames.n_frames
        for event in some.chunks:
            assert set(event.data["frames"][0]) == {"ts", "rms", "dominant_hz"}
        headers = (await _head(service, "mic-1")).headers
        assert headers["content-type"].startswith("text/event-stream")


async def _head(service: Service, sensor: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as client:
        return await client.head(f"/v1/sensors/{sensor}/live")


async def test_last_event_id_resumes_without_gap_or_duplicate_within_the_window(
    settings: config.Settings, writer: Writer
) -> None:
    await writer.write(*(extracted("mic-2", seq) for seq in range(10)))
    async with running(api_only(settings, live_replay_chunks=5)) as service:
        async with streaming(service, "mic-2", history=3) as stream:
            await stream.wait_for(lambda s: len(s.chunks) == 3)
            assert ids(stream) == [7, 8, 9]
        # Gone after 8 was received; 9 to 11 are committed meanwhile (10 and 11 in
        # two batches committed out of order, as two writers may).
        await writer.write(extracted("mic-2", 11))
        await writer.write(extracted("mic-2", 10))
        async with streaming(service, "mic-2", {"Last-Event-ID": "8"}) as stream:
            await stream.wait_for(lambda s: len(s.chunks) == 3)
            await writer.write(extracted("mic-2", 12))
            await stream.wait_for(lambda s: len(s.chunks) == 4)
        assert ids(stream) == [9, 10, 11, 12]
        assert not [e for e in stream.events if e.event != "chunk"]
        # Beyond the window (5 seqs): told what was skipped, then the newest five.
        async with streaming(service, "mic-2", {"Last-Event-ID": "1"}) as stream:
            await stream.wait_for(lambda s: len(s.chunks) == 5)
        missed = stream.events[0]
        assert missed.event == "missed" and missed.id == "7"
        assert missed.data == {"from": 2, "to": 7, "reason": "beyond-window"}
        assert ids(stream) == [8, 9, 10, 11, 12]


async def test_a_chunk_committed_late_is_still_sent(
    settings: config.Settings, writer: Writer
) -> None:
    await writer.write(extracted("mic-3", 0))
    async with running(api_only(settings)) as service, streaming(service, "mic-3") as stream:
        await writer.write(extracted("mic-3", 2))
        await stream.wait_for(lambda s: len(s.chunks) == 1)
        await writer.write(extracted("mic-3", 1))  # after 2 was sent
        await stream.wait_for(lambda s: len(s.chunks) == 2)
    assert [e.data["seq"] for e in stream.chunks] == [2, 1]
    # The id is the highest seq sent, and the seqs below it not sent yet: resuming
    # after it repeats nothing and misses nothing.
    assert [e.id for e in stream.chunks] == ["2;1", "2"]


async def test_a_resume_gets_a_chunk_committed_late_while_disconnected(
    settings: config.Settings, writer: Writer
) -> None:
    await writer.write(extracted("mic-9", 0))
    async with running(api_only(settings)) as service:
        async with streaming(service, "mic-9") as stream:
            await writer.write(extracted("mic-9", 3))  # 1 and 2 not committed yet
            await stream.wait_for(lambda s: len(s.chunks) == 1)
        last = stream.chunks[-1].id
        assert last == "3;1-2"
        # While the client is away, 2 is committed, then 4.
        await writer.write(extracted("mic-9", 2))
        await writer.write(extracted("mic-9", 4))
        async with streaming(service, "mic-9", {"Last-Event-ID": str(last)}) as stream:
            await stream.wait_for(lambda s: len(s.chunks) == 2)
            await writer.write(extracted("mic-9", 1))
            await stream.wait_for(lambda s: len(s.chunks) == 3)
        assert sorted(e.data["seq"] for e in stream.chunks) == [1, 2, 4]
        assert stream.chunks[-1].id == "4"
        # An id that names holes above its seq or beyond the window is refused.
        for bad in ("3;5", "3;1-9", "3;", "x", "90;1"):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.port}") as c:
                answer = await c.get("/v1/sensors/mic-9/live", headers={"Last-Event-ID": bad})
            assert answer.status_code == 400, bad


async def test_refusals_keys_and_the_bound_on_open_streams(
    settings: config.Settings, writer: Writer
) -> None:
    await writer.write(extracted("mic-4", 0))
    keyed = api_only(settings, api_key_digests=digests(KEY), max_live_streams=1, max_requests=1)
    authorized = {"Authorization": f"Bearer {KEY}"}
    async with running(keyed) as service:
        base = f"http://127.0.0.1:{service.port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            assert (await client.get("/v1/sensors/mic-4/live")).status_code == 401
            answer = await client.get("/v1/sensors/nobody/live", headers=authorized)
            assert answer.status_code == 404
            assert answer.headers["content-type"] == "application/problem+json"
            bad = {**authorized, "Last-Event-ID": "x1"}
            answer = await client.get("/v1/sensors/mic-4/live", headers=bad)
            assert answer.status_code == 400 and answer.json()["parameter"] == "Last-Event-ID"
            answer = await client.get("/v1/sensors/mic-4/live?fields=loud", headers=authorized)
            assert answer.status_code == 400 and answer.json()["parameter"] == "fields"
            async with streaming(service, "mic-4", authorized) as stream:
                assert stream.status == 200
                # The one stream allowed is open: another is refused at once...
                answer = await client.get("/v1/sensors/mic-4/live", headers=authorized)
                assert answer.status_code == 503 and answer.headers["retry-after"]
                # ...while it holds no place among requests in flight (max_requests=1).
                assert (await client.get("/v1/sensors", headers=authorized)).status_code == 200
                assert (await scrape(service))["soundstream_live_streams"] == 1
            # Its place is free again once it closed.
            await wait_for(lambda: _gauge(service, "soundstream_live_streams", 0))
            async with streaming(service, "mic-4", authorized) as stream:
                await writer.write(extracted("mic-4", 1))
                await stream.wait_for(lambda s: len(s.chunks) == 1)


async def _gauge(service: Service, name: str, value: float) -> bool:
    return (await scrape(service)).get(name) == value


async def test_a_client_that_stops_reading_is_dropped_and_nothing_piles_up(
    settings: config.Settings, writer: Writer
) -> None:
    await writer.write(extracted("mic-5", 0))
    s = api_only(settings, live_send_timeout_s=1.0)
    async with running(s) as service:
        sock = await anyio.to_thread.run_sync(_stalled_client, service.port, "mic-5")
        try:
            await wait_for(lambda: _gauge(service, "soundstream_live_streams", 1))
            # Far more than the socket buffers hold: 40 chunks of 10 s of every field.
            for seq in range(1, 41):
                await writer.write(extracted("mic-5", seq, seconds=10.0, rate=48000))
            await wait_for(
                lambda: _gauge(
                    service, 'soundstream_live_clients_dropped_total{reason="stalled"}', 1
                ),
                within=20,
            )
            assert (await scrape(service))["soundstream_live_streams"] == 0
            # One chunk's frames as JSON: about the size of one event.
            one = await service.get(
                "/v1/sensors/mic-5/features", start="2026-01-01T00:00:10Z",
                end="2026-01-01T00:00:20Z", limit=10000,
            )  # fmt: skip
            # The connection was cut, and the server kept nothing for it: what the
            # client can still read is what the sockets' buffers held, a fraction of
            # what was committed after it stopped.
            received = await anyio.to_thread.run_sync(_drain, sock)
            assert received < 40 * len(one.content) / 3, (received, len(one.content))
        finally:
            sock.close()
        # The replica goes on serving new streams.
        async with streaming(service, "mic-5") as stream:
            await writer.write(extracted("mic-5", 41))
            await stream.wait_for(lambda s: len(s.chunks) == 1)


def _stalled_client(port: int, sensor: str) -> socket.socket:
    """A client with a tiny receive buffer that asks for a stream and never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /v1/sensors/{sensor}/live HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return sock


def _drain(sock: socket.socket) -> int:
    sock.settimeout(10)
    total = 0
    try:
        while data := sock.recv(65536):
            total += len(data)
    except ConnectionResetError:
        pass
    return total


async def test_a_slow_client_that_falls_behind_gets_a_clear_close(
    settings: config.Settings, writer: Writer
) -> None:
    await writer.write(extracted("mic-6", 0))
    s = api_only(settings, live_replay_chunks=3, live_send_timeout_s=30.0)
    async with running(s) as service:
        sock = await anyio.to_thread.run_sync(_stalled_client, service.port, "mic-6")
        try:
            await wait_for(lambda: _gauge(service, "soundstream_live_streams", 1))
            for seq in range(1, 21):  # about 10 MB of events
                await writer.write(extracted("mic-6", seq, seconds=10.0, rate=48000))
            # Now read again, slowly at first: the stream notices it is behind.
            text = await anyio.to_thread.run_sync(_read_to_end, sock)
        finally:
            sock.close()
        assert text.rstrip().endswith("0")  # the chunked body's last chunk: a clean end
        close = text[text.rindex("event: close") :]
        assert '"reason":"behind"' in close
        got = [int(line[4:].split(";")[0]) for line in text.splitlines() if line.startswith("id: ")]
        assert got and max(got) < 20  # it never got to the end
        dropped = await scrape(service)
        assert dropped['soundstream_live_clients_dropped_total{reason="behind"}'] == 1


def _read_to_end(sock: socket.socket) -> str:
    sock.settimeout(20)
    parts = []
    while data := sock.recv(65536):
        parts.append(data)
    return b"".join(parts).decode("latin-1")


# --- the pages ------------------------------------------------------------------------


async def test_the_pages_are_served_self_contained(api: asyncpg.Pool) -> None:
    app = create_app(API, pool=api, ready=ready_ok)
    async with client_for(app) as client:
        for path, media_type in [
            ("/live/", "text/html"),
            ("/live/mic-7", "text/html"),
            ("/live/assets/live.js", "text/javascript"),
            ("/live/assets/live.css", "text/css"),
        ]:
            answer = await client.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"].startswith(media_type)
            # Nothing from another host, ever.
            assert not re.search(r"https?://|//[a-z]", answer.text, re.IGNORECASE), path
            if media_type == "text/html":
                policy = answer.headers["content-security-policy"]
                assert "default-src 'none'" in policy and "connect-src 'self'" in policy
                assert 'src="assets/live.js"' in answer.text
        assert (await client.get("/live/a%20b")).status_code == 400
        assert (await client.get("/live/assets/other.js")).status_code == 404


# --- several replicas ---------------------------------------------------------------


async def test_every_api_replica_streams_what_an_ingest_replica_wrote(
    topology: config.Settings,
) -> None:
    ingest = config.replace(topology, roles=frozenset({"ingest"}))
    async with (
        running(ingest),
        running(api_only(topology)) as one,
        running(api_only(topology)) as two,
        channel(topology.amqp_url) as ch,
    ):
        await publish_series(ch, topology.audio_exchange, "far-1", [0])
        await wait_for(lambda: stored_at_least(topology.database_url, 1), within=30)
        async with streaming(one, "far-1") as first, streaming(two, "far-1") as second:
            await publish_series(ch, topology.audio_exchange, "far-1", range(1, 4))
            for stream in (first, second):
                await stream.wait_for(lambda s: len(s.chunks) == 3, within=30)
                # Two batches may commit out of seq order: each chunk comes once, and
                # an id never goes back (a late lower seq is sent under the id reached).
                assert sorted(e.data["seq"] for e in stream.chunks) == [1, 2, 3]
                assert ids(stream) == sorted(ids(stream)) and ids(stream)[-1] == 3
        ready = (await one.get("/readyz")).json()
        assert ready["checks"]["live_feed"]["state"] == "up"


async def test_shutdown_closes_streams_with_a_reason(
    settings: config.Settings, writer: Writer
) -> None:
    await writer.write(extracted("mic-7", 0))
    async with running(api_only(settings)) as service:
        stream = Stream(f"http://127.0.0.1:{service.port}/v1/sensors/mic-7/live")
        async with anyio.create_task_group() as tg:
            await tg.start(stream.run)
            service.stop.set()
            await stream.wait_ended(within=5)
    assert [e.data["reason"] for e in stream.events if e.event == "close"] == ["shutdown"]
