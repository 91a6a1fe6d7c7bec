"""Load on one soundstream deployment: sensors publishing over AMQP, dashboards reading
over HTTP.

``SensorUser`` is one sensor with its own AMQP connection: a chunk per chunk duration
(1 s of 16 kHz s16le by default) at real time, ``seq`` +1 and ``start_ns`` following on
exactly, each publish timed from sending to the broker's confirm and reported as
``AMQP publish chunk`` (opening a connection as ``AMQP connect``). ``DashboardReader``
asks what a dashboard asks: mostly the last minute of a sensor, some 10-minute
overviews at 1 s, the sensor list, now and then one sensor's status. Requests are
named by route, so stats stay one line per kind of request.

Run it from the repository root (it imports the ``loadtest`` package from there);
``scripts/loadtest`` runs it headless and judges the run. By hand, against a
deployment::

    LOADTEST_API_KEY=... LOADTEST_AMQP_URL=amqps://user:pass@broker:5671/ \\
        .venv/bin/locust -f loadtest/locustfile.py --host https://api.example.org \\
        --users 30 --sensors 20

``--users`` counts both kinds: ``--sensors`` of them are sensors, the rest readers.
Name ``DashboardReader`` (or ``SensorUser``) after the options to run one kind only.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import gevent
from locust import FastHttpUser, User, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.exception import RescheduleTask
from locust.runners import WorkerRunner

from loadtest.amqp import Publisher
from loadtest.fleet import Fleet
from loadtest.sensors import SensorStream

FEATURES = "/v1/sensors/{id}/features"
OVERVIEW = "/v1/sensors/{id}/features?resolution=1s"
SENSORS = "/v1/sensors"
SENSOR = "/v1/sensors/{id}"
RECENT_S, OVERVIEW_S = 60, 600
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_RETRY_AFTER_S = 10.0

# This process's sensors, shared with its readers.
FLEET = Fleet()
# pika logs every connection's opening and closing at INFO.
logging.getLogger("pika").setLevel(logging.WARNING)


@events.init_command_line_parser.add_listener
def _options(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("soundstream")
    group.add_argument(
        "--amqp-url",
        env_var="LOADTEST_AMQP_URL",
        default="amqp://guest:guest@127.0.0.1:5672/",
        help="broker the sensors publish to (env LOADTEST_AMQP_URL)",
    )
    group.add_argument(
        "--exchange",
        env_var="LOADTEST_EXCHANGE",
        default="soundstream.audio",
        help="audio exchange (SOUNDSTREAM_AUDIO_EXCHANGE of the service)",
    )
    group.add_argument(
        "--api-key",
        env_var="LOADTEST_API_KEY",
        default="",
        help="bearer key(s) for /v1, comma-separated: readers take them in turn, so each "
        "key's rate limit carries a share (env LOADTEST_API_KEY)",
    )
    group.add_argument("--sensors", type=int, default=10, help="how many users are sensors")
    group.add_argument("--sensor-prefix", default="loadtest", help="sensor ids: PREFIX-RUN-NNNN")
    group.add_argument(
        "--run-id",
        default=datetime.now(UTC).strftime("%H%M%S") + f"{random.getrandbits(16):04x}",
        help="part of every sensor id, so a rerun never reuses one (default: time + random)",
    )
    group.add_argument("--sample-rate", type=int, default=16000)
    group.add_argument("--chunk-ms", type=int, default=1000)
    group.add_argument("--encoding", choices=("s16le", "f32le"), default="s16le")
    group.add_argument(
        "--publish-timeout", type=float, default=10.0, help="seconds to wait for a confirm"
    )
    group.add_argument(
        "--reader-wait",
        default="0.5,1.5",
        help="seconds a reader waits between requests: MIN,MAX (uniform)",
    )
    group.add_argument(
        "--rate-limited-ok",
        action="store_true",
        help="count a 429 as a success, reported under the request's name + ' (429)'",
    )
    group.add_argument(
        "--report-dir",
        default="",
        help="folder for sensors-<pid>.json (the chunks the broker confirmed, per sensor) "
        "and exceptions-<pid>.json (errors raised in the users' code)",
    )


@events.init.add_listener
def _init(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is not None:
        # Sensors are spawned first, exactly this many; readers take the rest.
        SensorUser.fixed_count = max(0, options.sensors)


@events.test_stop.add_listener
def _report(environment: Environment, **_: Any) -> None:
    # After the users stopped: every publish has its outcome.
    options = environment.parsed_options
    if options is None or not options.report_dir:
        return
    folder = Path(options.report_dir)
    FLEET.write_report(folder)
    # A worker's exceptions also reach its master, which writes them all.
    runner = environment.runner
    if runner is not None and not isinstance(runner, WorkerRunner) and runner.exceptions:
        raised = [
            {"count": error["count"], "message": error["msg"], "traceback": error["traceback"]}
            for error in runner.exceptions.values()
        ]
        (folder / f"exceptions-{os.getpid()}.json").write_text(json.dumps(raised))


class SensorUser(User):
    """One sensor on its own AMQP connection, publishing at real time."""

    fixed_count = 10
    _numbers = itertools.count()

    def on_start(self) -> None:
        options = self.environment.parsed_options
        assert options is not None
        index = next(SensorUser._numbers)
        # Worker processes of one run (--processes) number their sensors alike.
        runner = self.environment.runner
        worker = runner.worker_index if isinstance(runner, WorkerRunner) else None
        middle = options.run_id if worker is None else f"{options.run_id}w{worker}"
        sensor_id = f"{options.sensor_prefix}-{middle}-{index:04d}"
        self.stream = SensorStream(
            sensor_id,
            index,
            sample_rate=options.sample_rate,
            chunk_ms=options.chunk_ms,
            encoding=options.encoding,
            # Sensors started together would all be due at the same instant, every
            # chunk; real ones are not in step.
            start_in_s=random.uniform(0, options.chunk_ms / 1000),
        )
        self.publisher = Publisher(
            options.amqp_url, options.exchange, name=sensor_id, timeout_s=options.publish_timeout
        )
        self.timeout_s: float = options.publish_timeout
        FLEET.add(sensor_id)

    def on_stop(self) -> None:
        self.publisher.close()

    def wait_time(self) -> float:
        return self.stream.due_in()

    @task
    def publish(self) -> None:
        if self.stream.due_in() > 0:
            raise RescheduleTask()  # the first chunk is due one chunk after the start
        chunk = self.stream.next()
        try:
            if not self.publisher.connected:
                with self._measured("connect", 0):
                    self.publisher.connect()
        except Exception as exc:
            # The chunk's moment has passed: it counts as a failed publish.
            self._fire("publish chunk", 0.0, len(chunk.body), exc)
            FLEET.failed(chunk.sensor_id, chunk.seq)
            return
        try:
            with self._measured("publish chunk", len(chunk.body)):
                self.publisher.publish(chunk)
        except Exception:
            FLEET.failed(chunk.sensor_id, chunk.seq)
            self.publisher.close()  # in an unknown state: the next chunk reconnects
            return
        FLEET.confirmed(chunk.sensor_id, chunk.seq, chunk.end_ns)

    @contextmanager
    def _measured(self, name: str, length: int) -> Iterator[None]:
        """Time the block as one AMQP request, bounded by the publish timeout; any
        exception is reported as its failure, then raised."""
        started = time.perf_counter()
        try:
            with gevent.Timeout(self.timeout_s, TimeoutError(f"{name}: no answer in time")):
                yield
        except Exception as exc:
            self._fire(name, (time.perf_counter() - started) * 1000, length, exc)
            raise
        self._fire(name, (time.perf_counter() - started) * 1000, length, None)

    def _fire(self, name: str, ms: float, length: int, exc: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type="AMQP",
            name=name,
            response_time=ms,
            response_length=length,
            exception=exc,
            context={"sensor_id": self.stream.sensor_id},
        )


class DashboardReader(FastHttpUser):
    """A dashboard: the recent minute of a sensor most of the time, sometimes a
    10-minute overview at 1 s, the sensor list, and now and then a sensor's status.

    It learns sensors from ``/v1/sensors`` (with their last frame's time) and from this
    process's sensor users (up to their last confirmed chunk).
    """

    _numbers = itertools.count()

    def on_start(self) -> None:
        options = self.environment.parsed_options
        assert options is not None
        keys = [key.strip() for key in options.api_key.split(",") if key.strip()]
        index = next(DashboardReader._numbers)
        self.headers = {"Authorization": f"Bearer {keys[index % len(keys)]}"} if keys else {}
        low, _, high = options.reader_wait.partition(",")
        self.wait_range = (float(low), float(high or low))
        self.rate_limited_ok: bool = options.rate_limited_ok
        self.listed: dict[str, datetime] = {}  # sensor -> its last frame, as listed
        self.resume_at = 0.0  # monotonic: not before, as a 429 or 503 asked

    def wait_time(self) -> float:
        return max(random.uniform(*self.wait_range), self.resume_at - time.monotonic())

    @task(10)
    def recent_minute(self) -> None:
        self._features(RECENT_S, {"fields": "rms,centroid"}, FEATURES)

    @task(3)
    def overview(self) -> None:
        self._features(OVERVIEW_S, {"fields": "rms,centroid", "resolution": "1s"}, OVERVIEW)

    @task(2)
    def sensors(self) -> None:
        body = self._get(SENSORS, {}, SENSORS, key="sensors")
        if body is not None:
            self.listed = {
                sensor["sensor_id"]: datetime.fromisoformat(sensor["last_ts"])
                for sensor in body["sensors"]
                if sensor.get("last_ts")
            }

    @task(1)
    def status(self) -> None:
        # Only listed sensors: one of this run's may not be stored yet (a 404).
        if not self.listed:
            self.sensors()
            return
        sensor_id = random.choice(list(self.listed))
        self._get(f"/v1/sensors/{quote(sensor_id)}", {}, SENSOR, key="last_seq")

    def _features(self, seconds: int, params: dict[str, str], name: str) -> None:
        known = {sensor: last + timedelta(microseconds=1) for sensor, last in self.listed.items()}
        known.update(
            (sensor, EPOCH + timedelta(microseconds=-(-end_ns // 1000)))
            for sensor, end_ns in FLEET.live().items()
        )
        if not known:
            self.sensors()  # nothing to show yet: look for sensors first
            return
        sensor_id, end = random.choice(list(known.items()))
        window = {"start": _rfc3339(end - timedelta(seconds=seconds)), "end": _rfc3339(end)}
        self._get(f"/v1/sensors/{quote(sensor_id)}/features", window | params, name, key="frames")

    def _get(self, path: str, params: dict[str, str], name: str, *, key: str) -> Any:
        """GET ``path``; the JSON answer if it is a 200 holding ``key``, else None (and
        the request is a failure)."""
        url = f"{path}?{urlencode(params)}" if params else path
        with self.client.get(url, name=name, headers=self.headers, catch_response=True) as answer:
            if answer.status_code in (429, 503):
                # Come back when asked to, as a dashboard would.
                self.resume_at = time.monotonic() + _retry_after(answer)
            if answer.status_code == 429 and self.rate_limited_ok:
                answer.request_meta["name"] = f"{name} (429)"
                answer.success()
                return None
            if answer.status_code != 200:
                answer.failure(f"HTTP {answer.status_code}: {_title(answer)}")
                return None
            try:
                body = answer.json()
            except ValueError:
                answer.failure("answer is not JSON")
                return None
            if not isinstance(body, dict) or key not in body:
                answer.failure(f"answer has no {key!r}")
                return None
            return body


def _retry_after(answer: Any) -> float:
    try:
        return min(MAX_RETRY_AFTER_S, float(answer.headers.get("Retry-After") or 1))
    except ValueError:  # an HTTP date: not sent by the service, maybe by a proxy
        return 1.0


def _title(answer: Any) -> str:
    """A problem answer's title (the detail varies and would split the failure table)."""
    try:
        return str(answer.json().get("title", ""))
    except (ValueError, AttributeError):
        return ""


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
