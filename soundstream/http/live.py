"""The live view: ``GET /v1/sensors/{sensor_id}/live`` as Server-Sent Events of each
newly committed chunk, and the pages that draw them (``/live/``, ``/live/{sensor_id}``).

Any API replica serves any sensor: the writer that committed a chunk announces it
with ``NOTIFY`` (``store.announce``), this process's one listening connection hands
each announcement to the ``Hub``, and the hub wakes the streams of that sensor.
A stream then reads what it has not sent yet from the database, a few chunks at a
time, and sends it. So a stream holds no queue of its own: what a client has not
taken yet stays in the database, and memory per stream is one read and the
server's write buffer, whatever the client does.

A stream's events, one per committed chunk with frames, in seq order::

    id: 17
    event: chunk
    data: {"sensor_id": "mic-7", "seq": 17, "frames": [{"ts": ..., "rms": ...}, ...]}

An id is the highest seq sent, followed, when chunks below it have not been sent
yet (two batches committed out of seq order), by those seqs: ``id: 17;12-14,16``.
``Last-Event-ID`` (the last id received) resumes after that seq and with those
holes, so a chunk committed late during a disconnect still comes. A client more than
``live_replay_chunks`` seqs behind, on resuming or while reading, skips ahead: on
resuming it gets an ``event: missed`` naming the seqs skipped (its id the last of
them) and then the newest chunks; while reading, it is too slow, and gets
``event: close`` (reason ``behind``) and the end of the stream. A client that takes
no bytes for ``live_send_timeout_s`` is cut off (reason ``stalled``: it is not
reading, so it can be told nothing). Every close names its reason; a client
reconnects with ``Last-Event-ID`` to go on, from any replica.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import structlog
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from soundstream.config import Settings
from soundstream.core.fields import FEATURE_FIELDS
from soundstream.core.wire import INT64_MAX
from soundstream.errors import BadRequest
from soundstream.failures import describe
from soundstream.http import formats, problems, query
from soundstream.http.server import ABORT
from soundstream.observe.metrics import Metrics
from soundstream.store import announce, read
from soundstream.store.announce import Announcement, ChunkFrames

log = structlog.get_logger(__name__)

MEDIA_TYPE = "text/event-stream"
# A comment line this often when nothing else is sent, so that proxies (a load
# balancer's idle timeout is often 60 s) keep the connection.
KEEPALIVE_S = 15.0
# Without the announcement feed (its connection is being re-established), streams
# look for new chunks this often instead of waiting to be told.
POLL_S = 1.0
# Chunks read and sent at a time.
READ_CHUNKS = 16
# How long an EventSource waits before reconnecting after the stream ends.
RETRY_MS = 2000
# Seqs a stream remembers having sent, so that an announcement that comes after its
# chunk was already read (and sent) does not send it twice.
RECENT_SEQS = 256

ASSETS = {"live.js": "text/javascript", "live.css": "text/css"}
PAGES = ("live.html", "sensors.html")
# The pages load their script and style from this origin, and talk to it only.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_LIVE_PATH = re.compile(r"/sensors/[^/]+/live")


# --- fan-out ------------------------------------------------------------------------


class Subscription:
    """One stream's interest in one sensor: woken when the sensor's chunks are
    announced, with the highest announced seq and (a bounded set of) the seqs."""

    def __init__(self) -> None:
        self._woken = anyio.Event()
        self.head = -1  # the highest seq announced since subscribing
        self.announced: set[int] = set()

    def add(self, ranges: list[tuple[int, int]]) -> None:
        for first, last in ranges:
            self.head = max(self.head, last)
            if len(self.announced) < RECENT_SEQS:
                self.announced.update(range(first, min(last, first + RECENT_SEQS) + 1))
        self._woken.set()

    def wake(self) -> None:
        self._woken.set()

    def take(self) -> set[int]:
        """The seqs announced since the last take; what is announced from now on
        wakes the next wait."""
        self._woken = anyio.Event()
        taken, self.announced = self.announced, set()
        return taken

    async def wait(self, at_most_s: float) -> bool:
        """Until woken, for at most ``at_most_s``; whether woken."""
        with anyio.move_on_after(at_most_s):
            await self._woken.wait()
        return self._woken.is_set()


class Hub:
    """The open streams of this process, by sensor, and the announcement feed that
    wakes them (the supervisor runs ``announce.listen`` on ``feed``)."""

    def __init__(self) -> None:
        self._by_sensor: dict[str, set[Subscription]] = {}
        self.feed = announce.Feed(self.announce, self.resync)
        self.closing = anyio.Event()

    @property
    def listening(self) -> bool:
        return self.feed.listening

    @contextmanager
    def subscribe(self, sensor_id: str) -> Iterator[Subscription]:
        subscription = Subscription()
        self._by_sensor.setdefault(sensor_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._by_sensor[sensor_id]
            subscribers.discard(subscription)
            if not subscribers:
                del self._by_sensor[sensor_id]

    def announce(self, announcement: Announcement) -> None:
        for sensor_id, ranges in announcement.ranges.items():
            for subscription in self._by_sensor.get(sensor_id, ()):
                subscription.add(ranges)

    def resync(self) -> None:
        """The feed (re)connected: what was announced meanwhile was not heard, so
        every stream looks for itself."""
        for subscribers in self._by_sensor.values():
            for subscription in subscribers:
                subscription.wake()

    def close(self) -> None:
        """Shutting down: every stream says so and ends."""
        self.closing.set()
        self.resync()


class StreamLimit:
    """Live streams open at once, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        self.open -= 1


def is_live_stream(scope: Scope) -> bool:
    """A request for a live stream, within the ``/v1`` mount: bounded by
    ``max_live_streams``, not by the requests in flight."""
    return _LIVE_PATH.fullmatch(_route_path(scope)) is not None


def _route_path(scope: Scope) -> str:
    """The path within the mount (starlette keeps the whole path in ``path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


# --- the routes ---------------------------------------------------------------------


class LiveRoutes:
    """``/v1/sensors/{sensor_id}/live`` (``v1_routes``) and the pages (``page_routes``).

    Without a ``hub`` (an app made without the announcement feed, as in tests) a
    stream sends what it replays, then ``event: close`` with reason ``no-feed``."""

    def __init__(
        self,
        pool: read.Connections,
        settings: Settings,
        hub: Hub | None,
        metrics: Metrics,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._hub = hub
        self._metrics = metrics
        self.streams = StreamLimit(settings.max_live_streams)
        metrics.watch(metrics.live_streams, lambda: self.streams.open)
        static = resources.files("soundstream.http") / "static"
        self._files = {name: (static / name).read_bytes() for name in (*PAGES, *ASSETS)}
        self._busy = problems.problem(
            503,
            f"this replica has {settings.max_live_streams} live streams open already; "
            "retry shortly or elsewhere",
            headers={"Retry-After": "5"},
        )

    def v1_routes(self) -> list[BaseRoute]:
        return [Route("/sensors/{sensor_id}/live", self.live, methods=["GET"])]

    def page_routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/live/", self.sensors_page, methods=["GET"]),
            Route("/live/{sensor_id}", self.sensor_page, methods=["GET"]),
        ]
        for name in ASSETS:
            routes.append(Route(f"/live/assets/{name}", self._asset(name), methods=["GET"]))
        return routes

    # --- pages ------------------------------------------------------------------

    async def sensors_page(self, request: Request) -> Response:
        return self._page("sensors.html")

    async def sensor_page(self, request: Request) -> Response:
        query.sensor_id(request.path_params["sensor_id"])
        return self._page("live.html")

    def _page(self, name: str) -> Response:
        headers = {
            "Content-Security-Policy": PAGE_POLICY,
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        return Response(self._files[name], media_type="text/html", headers=headers)

    def _asset(self, name: str) -> Any:
        body, media_type = self._files[name], ASSETS[name]

        async def asset(request: Request) -> Response:
            headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
            return Response(body, media_type=media_type, headers=headers)

        return asset

    # --- the stream ---------------------------------------------------------------

    async def live(self, request: Request) -> Response | ASGIApp:
        sensor_id = query.sensor_id(request.path_params["sensor_id"])
        params = request.query_params
        fields = _fields(params)
        window = self._settings.live_replay_chunks
        history = query.bounded_int(params, "history", window, 0)
        last_id = _last_event_id(request.headers.get("last-event-id"), window)
        if not self.streams.take():
            return self._busy
        stream = _Stream(self, sensor_id, fields)
        try:
            opened = await stream.open(last_id, history)
        except BaseException:
            opened = False
            raise
        finally:
            if not opened or request.method == "HEAD":
                stream.close()
                self.streams.give_back()
        if not opened:
            return problems.problem(404, f"no sensor {sensor_id!r} has sent any audio")
        if request.method == "HEAD":
            return Response(media_type=MEDIA_TYPE, headers=_STREAM_HEADERS)
        return stream


_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _Dropped(Exception):
    """The client took no bytes for the send timeout."""


class _Stream:
    """One open stream: an ASGI app that sends events until the client leaves, is
    dropped, or the process shuts down."""

    def __init__(self, routes: LiveRoutes, sensor_id: str, fields: list[str]) -> None:
        self._routes = routes
        self._sensor_id = sensor_id
        self._fields = fields
        self._settings = routes._settings
        self._pool = routes._pool
        self._hub = routes._hub
        self._metrics = routes._metrics
        self._subscribing = self._hub.subscribe(sensor_id) if self._hub else None
        self._subscription = self._subscribing.__enter__() if self._subscribing else None
        self._cursor = -1  # the highest seq sent, or the one to go on after
        # Seqs below the cursor, within the window, that it passed over unsent: sent
        # if they are committed later, and named in the id for a resume.
        self._holes: set[int] = set()
        self._asked: set[int] = set()  # holes a resume named, read once at the start
        self._recent: deque[int] = deque(maxlen=RECENT_SEQS)
        self._first: list[bytes] = [b"retry: %d\n\n" % RETRY_MS]
        self._send: Send | None = None

    async def open(self, last_id: EventId | None, history: int) -> bool:
        """Find where the stream starts (subscribed already, so nothing committed
        from now on is missed); False if the sensor never sent anything."""
        latest = await announce.last_seq(self._pool, self._sensor_id)
        if latest is None:
            self.close()
            return False
        window = self._settings.live_replay_chunks
        if last_id is not None:
            self._cursor = last_id.seq
            self._holes = {seq for seq in last_id.holes if seq >= last_id.seq - window}
            if latest - last_id.seq > window:
                skip_to = await announce.seq_before_latest(self._pool, self._sensor_id, window)
                if skip_to is not None and skip_to > last_id.seq:
                    detail = {"from": last_id.seq + 1, "to": skip_to, "reason": "beyond-window"}
                    self._first.append(_event("missed", orjson.dumps(detail), str(skip_to)))
                    self._cursor = skip_to
                    self._holes = set()
            self._asked = set(self._holes)
        elif history:
            before = await announce.seq_before_latest(self._pool, self._sensor_id, history)
            self._cursor = -1 if before is None else before
        else:
            self._cursor = latest
        return True

    def close(self) -> None:
        if self._subscribing is not None:
            self._subscribing.__exit__(None, None, None)
            self._subscribing = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        headers += [(k.lower().encode(), v.encode()) for k, v in _STREAM_HEADERS.items()]
        reason = "left"  # unless something else ends it first
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async with anyio.create_task_group() as tg:
                tg.start_soon(_until_disconnected, receive, tg.cancel_scope)
                try:
                    reason = await self._run()
                    await self._end()
                except _Dropped:
                    reason = "stalled"
                tg.cancel_scope.cancel()
        finally:
            self.close()
            self._routes.streams.give_back()
        if reason in ("behind", "stalled"):
            self._metrics.live_clients_dropped.labels(reason).inc()
            log.info("live_client_dropped", sensor_id=self._sensor_id, reason=reason)
        if reason == "stalled":
            # Nothing more can be written: close the connection rather than leave it
            # open to a client that does not read.
            # Without the server's way to (another server), the stream just ends.
            abort = scope.get("extensions", {}).get(ABORT, {}).get("abort")
            if abort is not None:
                abort()
                await anyio.lowlevel.checkpoint()  # lets the server see it go

    async def _end(self) -> None:
        assert self._send is not None
        with anyio.move_on_after(self._settings.live_send_timeout_s) as waited:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        if waited.cancelled_caught:
            raise _Dropped

    async def _write(self, data: bytes) -> None:
        assert self._send is not None
        with anyio.move_on_after(self._settings.live_send_timeout_s) as waited:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        if waited.cancelled_caught:
            raise _Dropped

    async def _close(self, reason: str, detail: str) -> str:
        body = orjson.dumps({"reason": reason, "detail": detail})
        await self._write(_event("close", body))
        return reason

    async def _run(self) -> str:
        """Send until there is a reason to stop; the reason."""
        await self._write(b"".join(self._first))
        hub, subscription = self._hub, self._subscription
        window = self._settings.live_replay_chunks
        quiet_since = anyio.current_time()
        while True:
            if hub is not None and hub.closing.is_set():
                return await self._close("shutdown", "the server is shutting down; reconnect")
            if subscription is not None and subscription.head - self._cursor > window:
                return await self._close(
                    "behind",
                    f"the client fell more than {window} chunks behind; reconnect with "
                    "Last-Event-ID to skip ahead",
                )
            announced = subscription.take() if subscription is not None else set()
            announced |= self._asked
            self._asked = set()
            late = sorted(seq for seq in announced if seq <= self._cursor)
            late = [seq for seq in late if seq not in self._recent]
            try:
                chunks = await announce.read_chunks(
                    self._pool, self._sensor_id, after=self._cursor, also=late,
                    fields=self._fields, limit=READ_CHUNKS,
                )  # fmt: skip
            except Exception as exc:
                log.warning("live_read_failed", sensor_id=self._sensor_id, error=describe(exc))
                return await self._close("unavailable", "the database is unavailable; reconnect")
            for chunk in chunks:
                self._sent(chunk.seq)
                await self._write(self._chunk_event(chunk))
            if chunks:
                quiet_since = anyio.current_time()
            if len(chunks) == READ_CHUNKS:
                continue  # more may be waiting
            if hub is None or subscription is None:
                return await self._close("no-feed", "this process has no live feed")
            timeout = KEEPALIVE_S if hub.listening else POLL_S
            timeout = max(0.0, min(timeout, quiet_since + KEEPALIVE_S - anyio.current_time()))
            if not await subscription.wait(timeout) and (
                anyio.current_time() - quiet_since >= KEEPALIVE_S
            ):
                await self._write(b": keep-alive\n\n")
                quiet_since = anyio.current_time()

    def _sent(self, seq: int) -> None:
        """Account for ``seq`` being sent: past the cursor, the seqs jumped over
        become holes; below it, it fills one."""
        self._recent.append(seq)
        if seq > self._cursor:
            if self._cursor >= 0:
                low = max(self._cursor + 1, seq - self._settings.live_replay_chunks)
                self._holes.update(range(low, seq))
            self._cursor = seq
        else:
            self._holes.discard(seq)
        floor = self._cursor - self._settings.live_replay_chunks
        self._holes = {hole for hole in self._holes if hole >= floor}

    def _chunk_event(self, chunk: ChunkFrames) -> bytes:
        rows = formats.Rows(chunk.page, self._fields)
        frames = b",".join(formats.ndjson(rows).splitlines())
        head = orjson.dumps({"sensor_id": self._sensor_id, "seq": chunk.seq})[:-1]
        id_ = EventId(self._cursor, frozenset(self._holes)).text()
        return _event("chunk", head + b',"frames":[' + frames + b"]}", id_)


@dataclass(frozen=True, slots=True)
class EventId:
    """What an event id says: the highest seq sent, and the seqs below it not sent."""

    seq: int
    holes: frozenset[int] = frozenset()

    def text(self) -> str:
        if not self.holes:
            return str(self.seq)
        ranges = announce.seq_ranges(self.holes)
        return f"{self.seq};" + ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


_EVENT_ID = re.compile(r"(\d{1,19})(?:;(\d{1,19}(?:-\d{1,19})?(?:,\d{1,19}(?:-\d{1,19})?)*))?")
MAX_EVENT_ID = 4096


def parse_event_id(value: str, window: int) -> EventId:
    """``EventId.text`` read back; ``ValueError`` for anything else (holes must lie
    below the seq, within ``window`` of it)."""
    found = _EVENT_ID.fullmatch(value) if len(value) <= MAX_EVENT_ID else None
    if found is None:
        raise ValueError("not an id")
    seq = int(found.group(1))
    if seq > INT64_MAX:
        raise ValueError("beyond any seq")
    holes: set[int] = set()
    for part in (found.group(2) or "").split(",") if found.group(2) else []:
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if not seq - window <= low <= high < seq:
            raise ValueError("holes must lie below the seq, within the window")
        holes.update(range(low, high + 1))
    return EventId(seq, frozenset(holes))


def _event(name: str, data: bytes, id_: str | None = None) -> bytes:
    head = b"" if id_ is None else b"id: " + id_.encode() + b"\n"
    return head + b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


async def _until_disconnected(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _last_event_id(value: str | None, window: int) -> EventId | None:
    if value is None or not value.strip():
        return None
    try:
        return parse_event_id(value.strip(), window)
    except ValueError:
        raise BadRequest(
            "Last-Event-ID", "Last-Event-ID must be an id as sent in id: (a seq, then ;holes)"
        ) from None


def _fields(params: QueryParams) -> list[str]:
    """Feature columns in their canonical order; every one when none is named."""
    named = {part.strip() for value in params.getlist("fields") for part in value.split(",")}
    named.discard("")
    unknown = named.difference(("ts", *FEATURE_FIELDS))
    if unknown:
        listed = ", ".join(sorted(repr(name)[:40] for name in unknown)[:5])
        known = ", ".join(FEATURE_FIELDS)
        raise BadRequest("fields", f"fields has unknown names {listed}; known: ts, {known}")
    return [name for name in FEATURE_FIELDS if not named or name in named]
