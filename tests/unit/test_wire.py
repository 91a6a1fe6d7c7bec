"""Decoding every encoding, and every malformed kind of DESIGN.md section 2."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from soundstream.core import wav, wire
from soundstream.errors import Malformed

RATE = 16000
GOOD = np.zeros(8, dtype="<i2").tobytes()
NAN = np.array([0.0, np.nan], dtype="<f4").tobytes()
INF = np.array([np.inf, 0.0], dtype="<f4").tobytes()


def pcm_headers(**overrides: object) -> dict[str, object]:
    headers = wire.headers_for(
        "mic-1", 7, 1_700_000_000_000_000_000, sample_rate=RATE, encoding="s16le", channels=1
    )
    headers.update(overrides)
    return {k: v for k, v in headers.items() if v is not None}


def test_s16le_mono_scales_by_32768() -> None:
    body = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    chunk = wire.decode("audio/pcm", pcm_headers(), body, "mic-1:7")
    assert chunk.sensor_id == "mic-1" and chunk.seq == 7 and chunk.sample_rate == RATE
    assert chunk.samples.dtype == np.float32
    np.testing.assert_array_equal(chunk.samples, [0.0, 0.5, -1.0, 32767 / 32768])


def test_f32le_stereo_is_averaged() -> None:
    frames = np.array([[0.5, -0.5], [1.0, 0.0], [0.25, 0.75]], dtype="<f4")
    chunk = wire.decode("audio/pcm", pcm_headers(encoding="f32le", channels=2), frames.tobytes())
    np.testing.assert_array_equal(chunk.samples, [0.0, 0.5, 0.5])


def test_s16le_stereo_is_averaged() -> None:
    frames = np.array([[16384, 0], [-32768, -32768]], dtype="<i2")
    chunk = wire.decode("audio/pcm", pcm_headers(channels=2), frames.tobytes())
    np.testing.assert_array_equal(chunk.samples, [0.25, -1.0])


@pytest.mark.parametrize("encoding", ["s16le", "f32le"])
@pytest.mark.parametrize("channels", [1, 2])
def test_wav_round_trip(encoding: str, channels: int) -> None:
    rng = np.random.default_rng(1)
    samples = rng.uniform(-0.9, 0.9, size=(441, channels)).astype(np.float32)
    body = wav.build(samples, 44100, encoding)
    chunk = wire.decode("audio/wav", wire.headers_for("w", 0, 5), body, "w:0")
    assert chunk.sample_rate == 44100
    expected = samples.mean(axis=1) if channels == 2 else samples[:, 0]
    tolerance = 1 / 32768 if encoding == "s16le" else 1e-7
    np.testing.assert_allclose(chunk.samples, expected, atol=tolerance)


def test_wav_extensible_float_and_odd_chunks_are_read() -> None:
    data = np.array([0.25, -0.25], dtype="<f4").tobytes()
    guid = struct.pack("<H", wav.FORMAT_IEEE_FLOAT) + wav._GUID_TAIL
    fmt = struct.pack("<HHIIHH", wav.FORMAT_EXTENSIBLE, 1, 8000, 32000, 4, 32)
    fmt += struct.pack("<HHI", 22, 32, 4) + guid
    junk = b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd size, padded
    body = b"WAVE" + junk + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    riff = b"RIFF" + struct.pack("<I", len(body)) + body
    chunk = wire.decode("audio/wav", wire.headers_for("w", 0, 5), riff)
    np.testing.assert_array_equal(chunk.samples, [0.25, -0.25])


def test_short_chunk_and_empty_body_are_valid() -> None:
    assert len(wire.decode("audio/pcm", pcm_headers(), b"").samples) == 0


def test_content_type_parameters_and_case_are_ignored() -> None:
    body = np.zeros(4, dtype="<i2").tobytes()
    assert len(wire.decode("Audio/PCM; charset=binary", pcm_headers(), body).samples) == 4


@pytest.mark.parametrize(
    ("value", "kind"),
    [(b"mic-1", "bytes"), (b"\xffmic", "non-UTF-8 string"), (bytearray(b"mic-1"), "byte array")],
)
@pytest.mark.parametrize("header", ["sensor_id", "encoding"])
def test_byte_strings_are_not_strings(header: str, value: object, kind: str) -> None:
    # pamqp hands over a long string that is not UTF-8 as bytes, a byte array as bytearray:
    # neither is the string DESIGN.md asks for.
    with pytest.raises(Malformed) as caught:
        wire.decode("audio/pcm", pcm_headers(**{header: value}), GOOD)
    assert caught.value.reason == f"header {header} must be a string, got {kind}"


def test_empty_wav_is_malformed_but_a_wav_without_samples_is_not() -> None:
    with pytest.raises(Malformed, match="not a RIFF/WAVE"):
        wire.decode("audio/wav", pcm_headers(), b"")
    chunk = wire.decode("audio/wav", pcm_headers(), _odd_wav(wav.FORMAT_PCM, 1, 16))
    assert len(chunk.samples) == 0


@pytest.mark.parametrize(
    ("start_ns", "n", "rate", "fits"),
    [
        (wire.INT64_MAX, 0, RATE, True),  # no samples: ends where it starts
        (wire.INT64_MAX - 1_000_000, 16, RATE, True),  # exactly 1 ms of audio
        (wire.INT64_MAX - 999_999, 16, RATE, False),
        (wire.INT64_MAX - 20_834, 1, 48000, True),  # ceil(1e9 / 48000) = 20834
        (wire.INT64_MAX - 20_833, 1, 48000, False),
        (wire.INT64_MAX, 1, RATE, False),
    ],
)
def test_frame_times_must_fit_in_int64_nanoseconds(
    start_ns: int, n: int, rate: int, fits: bool
) -> None:
    headers = pcm_headers(start_ns=start_ns, sample_rate=rate)
    body = np.zeros(n, dtype="<i2").tobytes()
    if fits:
        assert wire.decode("audio/pcm", headers, body).start_ns == start_ns
    else:
        with pytest.raises(Malformed, match="frame times overflow int64"):
            wire.decode("audio/pcm", headers, body)


def test_frame_times_of_a_wav_must_fit_too() -> None:
    body = wav.build(np.zeros(8), 8000)
    with pytest.raises(Malformed, match="frame times overflow"):
        wire.decode("audio/wav", wire.headers_for("w", 0, wire.INT64_MAX), body)


@pytest.mark.parametrize(
    ("seq", "shown"),
    [
        (2**63, "got 9223372036854775808"),
        (2**64 + 5, "got a 65-bit integer"),
        (10**5000, "got a 16610-bit integer"),  # str() of it would raise ValueError
        (-(2**200), "got a 201-bit integer"),
    ],
    ids=["2**63", "2**64+5", "10**5000", "-2**200"],
)
def test_huge_seq_is_malformed_without_echoing_it(seq: int, shown: str) -> None:
    with pytest.raises(Malformed) as caught:
        wire.decode("audio/pcm", pcm_headers(seq=seq), GOOD)
    assert caught.value.reason == f"header seq must be in 0..{wire.INT64_MAX}, {shown}"


def test_largest_seq_is_fine() -> None:
    message_id = f"mic-1:{wire.INT64_MAX}"
    chunk = wire.decode("audio/pcm", pcm_headers(seq=wire.INT64_MAX), GOOD, message_id)
    assert chunk.seq == wire.INT64_MAX


def test_routing_key_must_name_the_sensor() -> None:
    assert wire.decode("audio/pcm", pcm_headers(), GOOD, routing_key="sensor.mic-1").seq == 7
    for wrong in ["sensor.mic-2", "", "sensor.mic-1.x", "SENSOR.mic-1", "mic-1"]:
        with pytest.raises(Malformed) as caught:
            wire.decode("audio/pcm", pcm_headers(), GOOD, "mic-1:7", routing_key=wrong)
        assert caught.value.reason == f"routing key {wrong!r} is not 'sensor.mic-1'"


def test_routing_key_reason_is_short() -> None:
    with pytest.raises(Malformed) as caught:
        wire.decode("audio/pcm", pcm_headers(), GOOD, routing_key="sensor." + "\n" * 250)
    assert "\n" not in caught.value.reason and len(caught.value.reason) < 200
    assert caught.value.reason.endswith("is not 'sensor.mic-1'")


def test_routing_key_is_checked_after_the_rest_and_before_message_id() -> None:
    with pytest.raises(Malformed, match="encoding is missing"):
        wire.decode("audio/pcm", pcm_headers(encoding=None), GOOD, "x:1", routing_key="x")
    with pytest.raises(Malformed, match="routing key"):
        wire.decode("audio/pcm", pcm_headers(), GOOD, "other:1", routing_key="sensor.other")
    with pytest.raises(Malformed, match="message_id"):
        wire.decode("audio/pcm", pcm_headers(), GOOD, "other:1", routing_key="sensor.mic-1")


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (None, "header sensor_id is missing"),
        ({}, "header sensor_id is missing"),
        ([("sensor_id", "mic-1")], "headers must be a table, got array"),
        ("sensor_id=mic-1", "headers must be a table, got string"),
        (b"\x00", "headers must be a table, got bytes"),
        (5, "headers must be a table, got integer"),
    ],
)
def test_headers_that_are_not_a_table(headers: object, reason: str) -> None:
    with pytest.raises(Malformed) as caught:
        wire.decode("audio/pcm", headers, GOOD)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("content_type", "message_id", "reason"),
    [
        (b"audio/pcm", None, "content_type must be a string, got bytes"),
        (7, None, "content_type must be a string, got integer"),
        ("", None, "content_type is missing"),
        (" ; x", None, "content_type is missing"),
        ("audio/" + "x" * 300, None, "content_type must be audio/pcm or audio/wav, got 'audio/"),
        ("audio/pcm", 7, "message_id must be a string, got integer"),
        ("audio/pcm", b"mic-1:7", "message_id must be a string, got bytes"),
        ("audio/pcm", ["mic-1:7"], "message_id must be a string, got array"),
        ("audio/pcm", "mic-1:07", "message_id 'mic-1:07' is not 'mic-1:7'"),
    ],
)
def test_odd_properties_are_malformed(
    content_type: object, message_id: object, reason: str
) -> None:
    with pytest.raises(Malformed) as caught:
        wire.decode(content_type, pcm_headers(), GOOD, message_id)
    assert caught.value.reason.startswith(reason)
    assert len(caught.value.reason) < 200


def test_empty_message_id_is_not_checked() -> None:
    assert wire.decode("audio/pcm", pcm_headers(), GOOD, "").seq == 7


def test_body_may_be_any_bytes_like() -> None:
    for body in (bytearray(GOOD), memoryview(GOOD)):
        assert len(wire.decode("audio/pcm", pcm_headers(), body).samples) == 8  # type: ignore[arg-type]


MALFORMED = [
    ("missing sensor_id", "audio/pcm", pcm_headers(sensor_id=None), GOOD, "sensor_id is missing"),
    ("bad sensor_id", "audio/pcm", pcm_headers(sensor_id="a b"), GOOD, "sensor_id must match"),
    ("long sensor_id", "audio/pcm", pcm_headers(sensor_id="x" * 65), GOOD, "sensor_id must match"),
    (
        "sensor_id not a string",
        "audio/pcm",
        pcm_headers(sensor_id=5),
        GOOD,
        "sensor_id must be a string, got integer",
    ),
    ("missing seq", "audio/pcm", pcm_headers(seq=None), GOOD, "seq is missing"),
    ("seq as string", "audio/pcm", pcm_headers(seq="7"), GOOD, "seq must be an integer"),
    ("seq negative", "audio/pcm", pcm_headers(seq=-1), GOOD, "seq must be in"),
    ("seq as bool", "audio/pcm", pcm_headers(seq=True), GOOD, "seq must be an integer"),
    ("missing start_ns", "audio/pcm", pcm_headers(start_ns=None), GOOD, "start_ns is missing"),
    ("start_ns float", "audio/pcm", pcm_headers(start_ns=1.5), GOOD, "start_ns must be an integer"),
    (
        "missing sample_rate",
        "audio/pcm",
        pcm_headers(sample_rate=None),
        GOOD,
        "sample_rate is missing",
    ),
    ("low sample_rate", "audio/pcm", pcm_headers(sample_rate=7999), GOOD, "sample_rate must be in"),
    (
        "high sample_rate",
        "audio/pcm",
        pcm_headers(sample_rate=192001),
        GOOD,
        "sample_rate must be in",
    ),
    ("missing encoding", "audio/pcm", pcm_headers(encoding=None), GOOD, "encoding is missing"),
    ("unknown encoding", "audio/pcm", pcm_headers(encoding="u8"), GOOD, "encoding must be"),
    ("missing channels", "audio/pcm", pcm_headers(channels=None), GOOD, "channels is missing"),
    ("three channels", "audio/pcm", pcm_headers(channels=3), GOOD, "channels must be in"),
    ("odd s16 length", "audio/pcm", pcm_headers(), b"\x00\x00\x00", "not a whole number"),
    (
        "partial stereo frame",
        "audio/pcm",
        pcm_headers(channels=2),
        b"\x00" * 6,
        "not a whole number",
    ),
    (
        "f32 not multiple of 4",
        "audio/pcm",
        pcm_headers(encoding="f32le"),
        b"\x00" * 6,
        "not a whole",
    ),
    ("NaN", "audio/pcm", pcm_headers(encoding="f32le"), NAN, "NaN or Inf"),
    ("Inf", "audio/pcm", pcm_headers(encoding="f32le"), INF, "NaN or Inf"),
    ("no content_type", None, pcm_headers(), GOOD, "content_type is missing"),
    ("unknown content_type", "audio/mpeg", pcm_headers(), GOOD, "content_type must be"),
    ("too large", "audio/pcm", pcm_headers(), b"\x00" * (8 * 1024 * 1024 + 2), "limit is"),
    ("not a wav", "audio/wav", pcm_headers(), b"RIFF....WAVX", "not a RIFF/WAVE"),
    ("wav without data", "audio/wav", pcm_headers(), wav.build(np.zeros(4), 8000)[:36], "no data"),
    ("wav truncated", "audio/wav", pcm_headers(), wav.build(np.zeros(400), 8000)[:100], "claims"),
    ("wav 8-bit", "audio/wav", pcm_headers(), None, "need PCM 16-bit or float 32-bit"),
    ("wav 5 channels", "audio/wav", pcm_headers(), None, "5 channels"),
    (
        "wav rate too low",
        "audio/wav",
        pcm_headers(),
        wav.build(np.zeros(4), 4000),
        "sample rate 4000",
    ),
    ("message_id mismatch", "audio/pcm", pcm_headers(), GOOD, "message_id"),
]


def _odd_wav(tag: int, channels: int, bits: int) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, 8000, 8000 * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 0)
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(
    ("content_type", "headers", "body", "reason"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_has_a_clear_one_line_reason(
    content_type: str | None, headers: dict[str, object], body: bytes | None, reason: str
) -> None:
    if body is None:
        body = _odd_wav(1, 1, 8) if "8-bit" in reason or "16-bit" in reason else _odd_wav(1, 5, 16)
    message_id = "other:1" if reason == "message_id" else None
    with pytest.raises(Malformed) as caught:
        wire.decode(content_type, headers, body, message_id)
    assert reason in caught.value.reason
    assert "\n" not in caught.value.reason and len(caught.value.reason) < 300


@given(st.binary(max_size=2048), st.sampled_from(["audio/pcm", "audio/wav"]))
def test_arbitrary_bodies_decode_or_raise_malformed(body: bytes, content_type: str) -> None:
    try:
        chunk = wire.decode(content_type, pcm_headers(), body)
    except Malformed:
        return
    assert chunk.samples.dtype == np.float32
    assert np.isfinite(chunk.samples).all()


@given(arrays(np.float32, st.integers(0, 300), elements=st.floats(-1, 1, width=32)))
def test_f32le_round_trips_exactly(samples: np.ndarray) -> None:
    body = wire.encode_pcm(samples, "f32le")
    chunk = wire.decode("audio/pcm", pcm_headers(encoding="f32le"), body)
    np.testing.assert_array_equal(chunk.samples, samples)


@given(
    st.dictionaries(
        st.sampled_from(["sensor_id", "seq", "start_ns", "sample_rate", "encoding", "channels"]),
        st.one_of(st.none(), st.integers(), st.text(max_size=8), st.floats(), st.booleans()),
    )
)
def test_arbitrary_headers_decode_or_raise_malformed(overrides: dict[str, object]) -> None:
    with contextlib.suppress(Malformed):
        wire.decode("audio/pcm", pcm_headers(**overrides), GOOD)


def test_a_deployment_may_lower_the_body_limit_but_not_raise_it() -> None:
    body = np.zeros(513, dtype="<i2").tobytes()
    with pytest.raises(Malformed, match="body is 1026 bytes; the limit is 1024"):
        wire.decode("audio/pcm", pcm_headers(), body, max_body=1024)
    assert len(wire.decode("audio/pcm", pcm_headers(), body, max_body=2048).samples) == 513
    huge = bytes(wire.MAX_BODY_BYTES + 2)
    with pytest.raises(Malformed, match=f"the limit is {wire.MAX_BODY_BYTES}$"):
        wire.decode("audio/pcm", pcm_headers(), huge, max_body=2 * wire.MAX_BODY_BYTES)
