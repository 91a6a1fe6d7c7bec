"""Decoding every encoding, and every malformed kind of DESIGN.md section 2."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from soundstream import wav, wire
from soundstream.errors import Malformed

RATE = 16000


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


def test_byte_string_headers_are_accepted() -> None:
    body = np.zeros(4, dtype="<i2").tobytes()
    chunk = wire.decode("audio/pcm", pcm_headers(sensor_id=b"mic-1", encoding=b"s16le"), body)
    assert chunk.sensor_id == "mic-1"


GOOD = np.zeros(8, dtype="<i2").tobytes()
NAN = np.array([0.0, np.nan], dtype="<f4").tobytes()
INF = np.array([np.inf, 0.0], dtype="<f4").tobytes()

MALFORMED = [
    ("missing sensor_id", "audio/pcm", pcm_headers(sensor_id=None), GOOD, "sensor_id is missing"),
    ("bad sensor_id", "audio/pcm", pcm_headers(sensor_id="a b"), GOOD, "sensor_id must match"),
    ("long sensor_id", "audio/pcm", pcm_headers(sensor_id="x" * 65), GOOD, "sensor_id must match"),
    ("sensor_id not a string", "audio/pcm", pcm_headers(sensor_id=5), GOOD, "sensor_id must match"),
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
