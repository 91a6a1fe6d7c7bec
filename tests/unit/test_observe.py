"""The pure parts of observability: secrets scrubbed from log lines, readiness
bookkeeping, the exporter the OTEL_* variables choose, the bounded labels."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.routing import Mount, Route

from soundstream import config, logs
from soundstream.core import wire
from soundstream.errors import MESSAGE_PARTS, Malformed, SettingsError
from soundstream.observe.metrics import Metrics
from soundstream.observe.requests import route_template
from soundstream.observe.tracing import trace_id_of
from soundstream.status import Status

SECRET = st.text(string.ascii_letters + string.digits + "-_.~!$*", min_size=6, max_size=40)


@given(
    password=SECRET,
    scheme=st.sampled_from(["amqp", "amqps", "postgresql", "postgres", "https"]),
    around=st.text(max_size=30).filter(lambda t: "@" not in t),
)
def test_a_url_password_never_survives(password: str, scheme: str, around: str) -> None:
    line = f"{around} {scheme}://user:{password}@db.example:5432/x {around}"
    hidden = logs.hide_secrets(line)
    assert f":{password}@" not in hidden
    assert f"{scheme}://user:***@db.example:5432/x" in hidden


@given(token=SECRET, scheme=st.sampled_from(["Bearer", "bearer", "Basic"]))
def test_a_bearer_token_never_survives(token: str, scheme: str) -> None:
    hidden = logs.hide_secrets(f"Authorization: {scheme} {token}")
    assert token not in hidden


@pytest.mark.parametrize("name", ["password", "api_key", "apikey", "token", "secret"])
def test_secret_parameters_are_hidden(name: str) -> None:
    assert "s3cr3t" not in logs.hide_secrets(f"GET /x?a=1&{name}=s3cr3t&b=2")


def test_redact_reaches_nested_values_and_exceptions() -> None:
    event = {
        "event": "failed",
        "error": ConnectionError("amqp://guest:hunter2@broker:5672/ refused"),
        "nested": {"urls": ["postgresql://u:hunter2@h/db"]},
        "count": 3,
    }
    out = logs.redact(None, "error", event)
    assert "hunter2" not in repr(out) and out["count"] == 3


def test_status_counts_readiness_changes_and_keeps_since() -> None:
    now = iter(range(100, 200))
    status = Status(clock=lambda: float(next(now)))
    status.expect("broker", "database")
    assert not status.ready() and status.changes == 0
    status.up("broker")
    status.up("database")
    assert status.ready() and status.changes == 1
    since = status.checks()["broker"].since
    status.up("broker")  # no change: since stays
    assert status.checks()["broker"].since == since
    status.down("database", "unreachable (OSError)")
    assert status.problems() == ["database: unreachable (OSError)"]
    assert status.changes == 2
    status.down("database", "unreachable (TimeoutError)")  # still not ready
    assert status.changes == 2


@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({}, "none"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, "none"),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, "none"),
    ],
)
def test_the_exporter_follows_the_standard_variables(env: dict[str, str], exporter: str) -> None:
    assert config.trace_exporter(env) == exporter
    assert config.load(env | {"SOUNDSTREAM_HTTP_HOST": "127.0.0.1"}).trace_exporter == exporter


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_an_exporter_we_cannot_run_is_refused(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        config.load(env | {"SOUNDSTREAM_HTTP_HOST": "127.0.0.1"})


@pytest.mark.parametrize(
    ("reason", "part"),
    [
        ("body is 9000000 bytes; the limit is 8388608", "body"),
        ("headers must be a table, got str", "headers"),
        ("header seq is missing", "headers"),
        ("content_type is missing", "content_type"),
        ("routing key 'x' is not 'sensor.a'", "routing_key"),
        ("message_id 'a:2' is not 'a:1'", "message_id"),
        ("body length 3 is not a whole number of 1-channel 16-bit samples", "audio"),
        ("wav: not a RIFF/WAVE file", "audio"),
        ("samples contain NaN or Inf", "audio"),
    ],
)
def test_each_rejection_has_a_bounded_part(reason: str, part: str) -> None:
    assert Malformed(reason).part == part
    assert part in MESSAGE_PARTS


@given(st.binary(max_size=64), st.dictionaries(st.text(max_size=8), st.integers(), max_size=3))
def test_any_rejection_of_the_wire_format_names_a_known_part(
    body: bytes, headers: dict[str, int]
) -> None:
    try:
        wire.decode("audio/pcm", headers, body, None, routing_key="sensor.x")
    except Malformed as exc:
        assert exc.part in MESSAGE_PARTS


@pytest.mark.parametrize(
    ("headers", "trace_id"),
    [
        ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
         "4bf92f3577b34da6a3ce929d0e0e4736"),
        ({"traceparent": b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"},
         "4bf92f3577b34da6a3ce929d0e0e4736"),
        ({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}, None),
        ({"traceparent": "garbage"}, None),
        ({"traceparent": 7}, None),
        ({}, None),
        ("not a table", None),
    ],
)  # fmt: skip
def test_trace_ids_come_only_from_valid_traceparents(headers: object, trace_id: str | None) -> None:
    assert trace_id_of(headers) == trace_id


def test_routes_are_templates_never_paths() -> None:
    inner = Route("/sensors/{sensor_id}", lambda r: None)
    assert route_template({"route": inner, "root_path": "/v1"}) == "/v1/sensors/{sensor_id}"
    assert route_template({"route": Mount("/v1", routes=[]), "root_path": "/v1"}) == "/v1/{path}"
    assert route_template({}) == "unmatched"


def test_an_api_replica_exports_no_broker_gauges() -> None:
    text = Metrics().exposition().decode()
    assert "soundstream_broker_queue" not in text
    assert 'soundstream_chunks_dead_lettered_total{reason="body"} 0.0' in text
