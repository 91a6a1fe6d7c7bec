"""Whatever a publisher sends, ``decode`` returns a Chunk or raises Malformed, and the
dead copy's headers can always be encoded again.

Header tables are built as AMQP wire bytes, one strategy per field type pamqp decodes
(every tag of ``pamqp.decode.TABLE_MAPPING``, including those pamqp's own encoder never
writes), then decoded by pamqp itself: the values are exactly what the consumer receives.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import numpy as np
import pamqp.decode
import pamqp.encode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from soundstream.core import wav, wire
from soundstream.errors import Malformed
from soundstream.ingest import deadcopy

GOOD = np.zeros(8, dtype="<i2").tobytes()
WAV_BODY = wav.build(np.zeros(8), 8000)
LATEST_MS = 253_402_300_799_999  # pamqp reads a timestamp over 2**32 as ms; year 9999 ends here


def _long(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _table(entries: list[tuple[str, bytes]]) -> bytes:
    """A field table on the wire; ``entries`` are (key, tagged value) and may repeat keys."""
    body = b"".join(bytes([len(k.encode())]) + k.encode() + value for k, value in entries)
    return _long(body)


def received(entries: list[tuple[str, bytes]]) -> dict[str, Any]:
    """The headers as the consumer gets them: pamqp's decoding of the wire bytes."""
    _, table = pamqp.decode.field_table(_table(entries))
    return table


def _packed(tag: bytes, fmt: str) -> Callable[[Any], bytes]:
    return lambda value: tag + struct.pack(fmt, value)


INTEGERS = {
    b"b": (">b", -(2**7), 2**7 - 1),
    b"B": (">B", 0, 2**8 - 1),
    b"s": (">h", -(2**15), 2**15 - 1),
    b"u": (">H", 0, 2**16 - 1),
    b"I": (">i", -(2**31), 2**31 - 1),
    b"i": (">I", 0, 2**32 - 1),
    b"l": (">q", -(2**63), 2**63 - 1),
    b"L": (">Q", 0, 2**64 - 1),  # unsigned on the wire; pamqp reads it signed
}
FIELDS: dict[bytes, st.SearchStrategy[bytes]] = {
    **{tag: st.integers(lo, hi).map(_packed(tag, fmt)) for tag, (fmt, lo, hi) in INTEGERS.items()},
    b"t": st.integers(0, 255).map(lambda v: b"t" + bytes([v])),
    b"f": st.binary(min_size=4, max_size=4).map(lambda raw: b"f" + raw),  # NaNs, infinities
    b"d": st.binary(min_size=8, max_size=8).map(lambda raw: b"d" + raw),
    b"D": st.tuples(st.integers(0, 255), st.integers(-(2**31), 2**31 - 1)).map(
        lambda sm: b"D" + struct.pack(">Bi", *sm)
    ),
    # str when the bytes are UTF-8, bytes when not.
    b"S": st.one_of(st.text(max_size=16).map(str.encode), st.binary(max_size=16)).map(
        lambda raw: b"S" + _long(raw)
    ),
    b"x": st.binary(max_size=16).map(lambda raw: b"x" + _long(raw)),
    b"T": st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32, LATEST_MS)).map(
        _packed(b"T", ">Q")
    ),
    b"V": st.just(b"V"),
    b"\x00": st.just(b"\x00"),
}
KEYS = st.one_of(
    st.text(max_size=10),  # at most 40 bytes
    st.integers(127, 255).map(lambda n: "k" * n),  # pamqp reads 255 bytes, writes 128
)


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.lists(children, max_size=4).map(lambda values: b"A" + _long(b"".join(values))),
        st.lists(st.tuples(KEYS, children), max_size=4).map(lambda es: b"F" + _table(es)),
    )


FIELD = st.recursive(st.one_of(*FIELDS.values()), _containers, max_leaves=8)
TABLE_ENTRIES = st.lists(st.tuples(KEYS, FIELD), max_size=5)

LISTED = ["sensor_id", "seq", "start_ns", "sample_rate", "encoding", "channels"]
VALID = {
    "sensor_id": b"S" + _long(b"mic-1"),
    "seq": b"b" + struct.pack(">b", 7),
    "start_ns": b"l" + struct.pack(">q", 1_700_000_000_000_000_000),
    "sample_rate": b"u" + struct.pack(">H", 16000),
    "encoding": b"S" + _long(b"s16le"),
    "channels": b"B" + bytes([1]),
}


def test_every_field_type_pamqp_decodes_has_a_strategy() -> None:
    assert set(FIELDS) | {b"A", b"F"} == set(pamqp.decode.TABLE_MAPPING)


def check(
    content_type: object,
    headers: object,
    body: bytes,
    message_id: object = None,
    routing_key: str | None = None,
) -> wire.Chunk | None:
    """Decode; a Chunk must be sound, anything raised must be Malformed with a short line."""
    try:
        chunk = wire.decode(content_type, headers, body, message_id, routing_key=routing_key)
    except Malformed as exc:
        assert exc.reason and "\n" not in exc.reason and len(exc.reason) < 300, exc.reason
        dead = deadcopy.dead_letter_headers(headers, exc.reason, routing_key)
        assert_round_trips(dead)
        return None
    assert isinstance(headers, dict)
    assert type(headers["sensor_id"]) is str and wire.valid_sensor_id(chunk.sensor_id)
    for name in ("seq", "start_ns"):
        assert type(headers[name]) is int and 0 <= headers[name] <= wire.INT64_MAX
    if isinstance(content_type, str) and "pcm" in content_type.lower():
        assert type(headers["sample_rate"]) is int and type(headers["channels"]) is int
        assert type(headers["encoding"]) is str
    end = chunk.start_ns + math.ceil(len(chunk.samples) * 10**9 / chunk.sample_rate)
    assert end <= wire.INT64_MAX + 1  # float ceil; the exact check is in decode
    assert chunk.samples.dtype == np.float32 and np.isfinite(chunk.samples).all()
    if routing_key is not None:
        assert routing_key == f"sensor.{chunk.sensor_id}"
    return chunk


@settings(max_examples=200)
@given(
    overrides=st.dictionaries(st.sampled_from(LISTED), FIELD, max_size=3),
    extra=TABLE_ENTRIES,
    content_type=st.sampled_from(["audio/pcm", "audio/wav"]),
    body=st.sampled_from([GOOD, b"", WAV_BODY]),
)
def test_received_header_tables_decode_or_raise_malformed(
    overrides: dict[str, bytes], extra: list[tuple[str, bytes]], content_type: str, body: bytes
) -> None:
    entries = list({**VALID, **overrides}.items()) + extra  # a repeated key: the last wins
    check(content_type, received(entries), body, "mic-1:7", "sensor.mic-1")


ODD_TEXT = st.one_of(
    st.text(max_size=24),
    st.tuples(st.text(alphabet="\n\x00'\"\\é", max_size=8), st.integers(0, 300)).map(
        lambda tn: tn[0] * tn[1]
    ),
)


@settings(max_examples=200)
@given(
    content_type=st.one_of(
        st.none(),
        st.sampled_from(["audio/pcm", "audio/wav", "AUDIO/PCM; rate=1", "", ";"]),
        ODD_TEXT,
        st.binary(max_size=8),
        st.integers(),
        st.floats(),
    ),
    headers=st.one_of(
        st.none(),
        st.builds(
            lambda over, extra: received(list({**VALID, **over}.items()) + extra),
            st.dictionaries(st.sampled_from(LISTED), FIELD, max_size=2),
            st.lists(st.tuples(KEYS, FIELD), max_size=2),
        ),
        TABLE_ENTRIES.map(received),
        st.lists(st.integers(), max_size=3),
        ODD_TEXT,
        st.binary(max_size=8),
        st.integers(),
    ),
    body=st.one_of(st.sampled_from([GOOD, b"", WAV_BODY]), st.binary(max_size=64)),
    message_id=st.one_of(st.none(), st.just("mic-1:7"), ODD_TEXT, st.integers(), st.binary()),
    routing_key=st.one_of(st.none(), st.just("sensor.mic-1"), ODD_TEXT),
)
def test_any_properties_decode_or_raise_malformed(
    content_type: object, headers: object, body: bytes, message_id: object, routing_key: str | None
) -> None:
    check(content_type, headers, body, message_id, routing_key)


# One example of each field type, as wire bytes; integers hold the header's valid value
# when their width allows, else their largest value.
EXAMPLES: list[tuple[str, bytes | None, str]] = [
    ("S", None, "string"),
    ("S not UTF-8", b"S" + _long(b"\xffmic-1"), "non-UTF-8 string"),
    ("x", b"x" + _long(b"mic-1"), "byte array"),
    *((f"int {tag.decode()}", tag, "integer") for tag in INTEGERS),
    ("t", b"t\x01", "boolean"),
    ("t zero", b"t\x00", "boolean"),
    ("f", b"f" + struct.pack(">f", 16000.0), "float"),
    ("d", b"d" + struct.pack(">d", 7.0), "float"),
    ("f NaN", b"f" + struct.pack(">f", math.nan), "float"),
    ("D", b"D" + struct.pack(">Bi", 0, 7), "decimal"),
    ("T", b"T" + struct.pack(">Q", 7), "timestamp"),
    ("A", b"A" + _long(b"b\x07"), "array"),
    ("A empty", b"A" + _long(b""), "array"),
    ("F", b"F" + _table([("seq", b"b\x07")]), "table"),
    ("V", b"V", "void"),
    ("NUL", b"\x00", "void"),
]
INT_RANGES = {
    "seq": (0, wire.INT64_MAX),
    "start_ns": (0, wire.INT64_MAX),
    "sample_rate": (wire.MIN_RATE, wire.MAX_RATE),
    "channels": (1, 2),
}
VALID_VALUES: dict[str, Any] = received(list(VALID.items()))


def _example(header: str, label: str, raw: bytes | None) -> bytes:
    if raw is None:  # a string: the valid one, so string headers pass
        return VALID[header] if header not in INT_RANGES else b"S" + _long(b"7")
    if label.startswith("int "):
        tag = raw
        fmt, lo, hi = INTEGERS[tag]
        value = VALID_VALUES.get(header, 7)
        return tag + struct.pack(fmt, value if isinstance(value, int) and lo <= value <= hi else hi)
    return raw


@pytest.mark.parametrize(
    ("label", "raw", "kind"), EXAMPLES, ids=[example[0] for example in EXAMPLES]
)
@pytest.mark.parametrize("header", LISTED)
def test_each_field_type_in_each_listed_header(
    header: str, label: str, raw: bytes | None, kind: str
) -> None:
    headers = received(list({**VALID, header: _example(header, label, raw)}.items()))
    value = headers[header]
    if header in INT_RANGES and kind == "integer":
        lo, hi = INT_RANGES[header]
        if lo <= value <= hi:
            assert check("audio/pcm", headers, GOOD) is not None
        else:
            with pytest.raises(Malformed, match=f"^header {header} must be in {lo}..{hi}, got"):
                wire.decode("audio/pcm", headers, GOOD)
    elif header not in INT_RANGES and kind == "string":
        chunk = check("audio/pcm", headers, GOOD)
        assert chunk is not None and chunk.sensor_id == "mic-1"
    else:
        wanted = "an integer" if header in INT_RANGES else "a string"
        with pytest.raises(Malformed) as caught:
            wire.decode("audio/pcm", headers, GOOD)
        assert caught.value.reason == f"header {header} must be {wanted}, got {kind}"
        dead = deadcopy.dead_letter_headers(headers, caught.value.reason, "sensor.mic-1")
        assert_round_trips(dead)


@pytest.mark.parametrize("label", [label for label, _, _ in EXAMPLES])
def test_wav_does_not_read_the_pcm_only_headers(label: str) -> None:
    raw = next(raw for name, raw, _ in EXAMPLES if name == label)
    pcm_only = {
        name: _example(name, label, raw) for name in ("sample_rate", "encoding", "channels")
    }
    headers = received(list({**VALID, **pcm_only}.items()))
    assert check("audio/wav", headers, WAV_BODY, "mic-1:7", "sensor.mic-1") is not None


# The dead copy's headers.


def _normal(value: Any) -> Any:
    """A value as it survives pamqp: floats sent as 32-bit, bytes as byte arrays, bool
    apart from int, timestamps by type only (pamqp writes whole seconds, then guesses
    whether it reads seconds or milliseconds)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else struct.unpack(">f", struct.pack(">f", value))[0]
    if isinstance(value, datetime | time.struct_time):
        return "timestamp"
    if isinstance(value, bytes | bytearray):
        return ("octets", bytes(value))
    if isinstance(value, list):
        return [_normal(item) for item in value]
    if isinstance(value, dict):
        return {key: _normal(item) for key, item in value.items()}
    return value


def assert_round_trips(headers: dict[str, object]) -> None:
    """pamqp encodes the table, and decoding it gives it back (as far as pamqp can)."""
    encoded = pamqp.encode.field_table(headers)
    consumed, decoded = pamqp.decode.field_table(encoded)
    assert consumed == len(encoded)
    assert set(decoded) == set(headers), "no key was cut or merged"
    assert _normal(decoded) == _normal(headers)


@settings(max_examples=200)
@given(entries=TABLE_ENTRIES, reason=st.text(max_size=40), routing_key=st.none() | ODD_TEXT)
def test_dead_letter_headers_of_received_tables_round_trip(
    entries: list[tuple[str, bytes]], reason: str, routing_key: str | None
) -> None:
    headers = received(entries)
    dead = deadcopy.dead_letter_headers(headers, reason, routing_key)
    assert_round_trips(dead)
    assert dead["x-error"] == reason
    assert dead["x-original-routing-key"] == (routing_key or "")[: deadcopy.MAX_TEXT]
    dropped = dead.get("x-dropped-headers", [])
    converted = dead.get("x-converted-headers", [])
    assert isinstance(dropped, list) and isinstance(converted, list)
    ours = {"x-error", "x-original-routing-key", "x-dropped-headers", "x-converted-headers"}
    originals = {key: value for key, value in headers.items() if key not in ours}
    for key, value in originals.items():
        if key in dead:
            assert _normal(dead[key]) == _normal(value)
            assert (key in converted) == _holds_bytes(value)
    # Only what pamqp cannot write again is dropped: keys over 128 bytes, big doubles.
    assert len(dropped) == len([key for key in originals if key not in dead])
    assert all(why.endswith(("over 128", "float beyond the 32-bit range")) for why in dropped)


def _holds_bytes(value: Any) -> bool:
    if isinstance(value, list):
        return any(_holds_bytes(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_bytes(item) for item in value.values())
    return isinstance(value, bytes)


class Opaque:
    """Some object no AMQP encoder knows."""


ZONES = st.sampled_from([None, UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12))])
PY_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.decimals(),
    st.decimals(places=300),
    st.text(max_size=8),
    st.text(alphabet=st.characters(categories=["Cs", "Lu"]), max_size=4),  # lone surrogates
    st.binary(max_size=8),
    st.binary(max_size=8).map(bytearray),
    st.datetimes(timezones=ZONES),
    st.just(time.gmtime(0)),
    st.tuples(st.integers()),
    st.just(Opaque()),
    st.just(np.int64(5)),
    st.just(np.float64(1e300)),
)
PY_KEYS = st.one_of(
    st.text(max_size=8),
    st.integers(120, 140).map(lambda n: "é" * (n // 2)),
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=2),
    st.integers(),
    st.none(),
    st.binary(max_size=4),
)
PY_VALUES = st.recursive(
    PY_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(PY_KEYS, children, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=200)
@given(
    headers=st.one_of(
        st.dictionaries(PY_KEYS, PY_VALUES, max_size=6),
        st.none(),
        PY_VALUES,
    ),
    reason=st.one_of(st.text(max_size=40), st.text(alphabet=st.characters(categories=["Cs"]))),
    routing_key=st.none() | st.text(max_size=20),
)
def test_dead_letter_headers_of_any_python_values_are_encodable(
    headers: object, reason: str, routing_key: str | None
) -> None:
    dead = deadcopy.dead_letter_headers(headers, reason, routing_key)
    assert all(isinstance(key, str) for key in dead)
    assert_round_trips(dead)


def _nested(depth: int) -> bytes:
    value = b"b\x01"
    for _ in range(depth):
        value = b"A" + _long(value)
    return value


@pytest.mark.parametrize(("depth", "kept"), [(1, True), (deadcopy.MAX_NESTING, True), (400, False)])
def test_dead_letter_headers_drop_nesting_deep_enough_to_exhaust_the_stack(
    depth: int, kept: bool
) -> None:
    headers = received([("deep", _nested(depth)), ("ok", b"b\x01")])
    dead = deadcopy.dead_letter_headers(headers, "why", "sensor.x")
    assert ("deep" in dead) is kept and dead["ok"] == 1
    if not kept:
        assert dead["x-dropped-headers"] == [f"deep: nested deeper than {deadcopy.MAX_NESTING}"]
    assert_round_trips(dead)


# What pamqp 4 does that the code above works around; if one of these changes, look again.


def test_pamqp_reads_a_long_string_that_is_not_utf8_as_bytes_and_cannot_write_it() -> None:
    headers = received([("a", b"S" + _long(b"\xff")), ("b", b"S" + _long(b"\xc3\xa9"))])
    assert headers == {"a": b"\xff", "b": "é"}
    with pytest.raises(TypeError):
        pamqp.encode.field_table({"a": b"\xff"})


def test_pamqp_writes_every_float_as_32_bit() -> None:
    (value,) = received([("d", b"d" + struct.pack(">d", 0.1))]).values()
    assert pamqp.decode.field_table(pamqp.encode.field_table({"d": value}))[1]["d"] != 0.1
    with pytest.raises(OverflowError):
        pamqp.encode.field_table({"d": 1e300})


def test_pamqp_reads_unsigned_64_bit_as_signed() -> None:
    assert received([("L", b"L" + struct.pack(">Q", 2**64 - 1))]) == {"L": -1}


def test_pamqp_guesses_the_unit_of_a_timestamp() -> None:
    ms = received([("T", b"T" + struct.pack(">Q", 1_700_000_000_123))])["T"]
    assert ms == datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC)
    again = pamqp.decode.field_table(pamqp.encode.field_table({"T": ms}))[1]["T"]
    assert again == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC), "written back as seconds"
    late = datetime(2200, 1, 1, tzinfo=UTC)  # over 2**32 s: read back as ms
    assert pamqp.decode.field_table(pamqp.encode.field_table({"T": late}))[1]["T"].year == 1970


@pytest.mark.parametrize(
    "raw",
    [
        _table([("T", b"T" + struct.pack(">Q", 2**63))]),  # beyond year 9999
        _long(b"\x01\xff" + b"V"),  # a key that is not UTF-8
        _table([("n", _nested(1000))]),
    ],
    ids=["timestamp", "key", "nesting"],
)
def test_pamqp_itself_fails_on_some_tables(raw: bytes) -> None:
    # These never reach decode: the client library fails first, and the broker's delivery
    # limit dead-letters the message (DESIGN.md section 3).
    with pytest.raises((ValueError, RecursionError)):
        pamqp.decode.field_table(raw)


def test_pamqp_cuts_long_keys_so_two_can_collide() -> None:
    encoded = pamqp.encode.field_table({"k" * 129: 1, "k" * 130: 2})
    _, decoded = pamqp.decode.field_table(encoded)
    assert list(decoded) == ["k" * 128]
    dead = deadcopy.dead_letter_headers({"k" * 129: 1, "k" * 130: 2}, "why", None)
    assert len(dead["x-dropped-headers"]) == 2  # type: ignore[arg-type]
    assert_round_trips(dead)


def test_decimal_round_trip_and_its_limits() -> None:
    assert received([("D", b"D" + struct.pack(">Bi", 2, -150))]) == {"D": Decimal("-1.50")}
    dead = deadcopy.dead_letter_headers(
        {"ok": Decimal("-1.50"), "big": Decimal(2**31), "nan": Decimal("NaN")}, "why", None
    )
    assert dead["ok"] == Decimal("-1.50")
    assert dead["x-dropped-headers"] == [
        "big: decimal mantissa outside 32 bits",
        "nan: decimal NaN or infinity",
    ]
    assert_round_trips(dead)
