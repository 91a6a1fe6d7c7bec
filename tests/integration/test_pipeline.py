"""End to end in one process: real AMQP publish -> rows in PostgreSQL -> frames over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
from support import (
    START_NS,
    channel,
    publish,
    publish_pcm,
    publish_series,
    queue_depth,
    running,
    stored_at_least,
    tone,
    wait_for,
)

from soundstream import config
from soundstream.core import wav, wire
from soundstream.core.features import Extractor, frame_count
from soundstream.core.records import frame_times_us
from soundstream.store.read import FEATURE_FIELDS

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CHUNK_S = 0.5


def rfc3339(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_frames_flow_end_to_end_with_exact_values(topology: config.Settings) -> None:
    s = topology
    sensors = {
        "mic-a": (16000, "s16le", 1),
        "mic-b": (44100, "f32le", 2),
        "mic-c": (8000, "s16le", 1),
    }
    bodies: dict[tuple[str, int], np.ndarray] = {}
    async with running(s) as service, channel(s.amqp_url) as ch:
        for index, (sensor, (rate, encoding, channels)) in enumerate(sensors.items()):
            for seq in range(3):
                samples = tone(CHUNK_S, rate, seed=index * 10 + seq)
                start = START_NS + seq * int(CHUNK_S * 1e9)
                await publish_pcm(
                    ch, s.audio_exchange, sensor, seq, samples, rate,
                    start_ns=start, encoding=encoding, channels=channels,
                )  # fmt: skip
                frames = np.repeat(samples[:, None], channels, axis=1) if channels == 2 else samples
                body = wire.encode_pcm(frames, encoding)
                headers = wire.headers_for(
                    sensor, seq, start, sample_rate=rate, encoding=encoding, channels=channels
                )
                bodies[(sensor, seq)] = wire.decode("audio/pcm", headers, body).samples
        # One chunk as a complete WAV file, and one shorter than n_fft (no frames).
        wav_samples = tone(CHUNK_S, 22050, seed=99)
        await publish(
            ch, s.audio_exchange, wav.build(wav_samples, 22050, "s16le"),
            wire.headers_for("mic-w", 0, START_NS), content_type="audio/wav", message_id="mic-w:0",
        )  # fmt: skip
        await publish_pcm(ch, s.audio_exchange, "mic-short", 0, tone(0.01, 16000), 16000)

        await wait_for(lambda: stored_at_least(s.database_url, 11))
        listing = (await service.get("/v1/sensors")).json()
        by_id = {row["sensor_id"]: row for row in listing["sensors"]}
        assert set(by_id) == {*sensors, "mic-w", "mic-short"}
        assert by_id["mic-short"]["chunks"] == 1 and by_id["mic-short"]["frames"] == 0

        extractor = Extractor(s.features)
        for sensor, (rate, _, _) in sensors.items():
            status = (await service.get(f"/v1/sensors/{sensor}")).json()
            assert status["chunks"] == 3 and status["last_seq"] == 2 and status["missing_seq"] == []
            answer = await service.get(
                f"/v1/sensors/{sensor}/features",
                start=rfc3339(START_NS // 1000),
                end=rfc3339(START_NS // 1000 + 10**7),
            )
            assert answer.status_code == 200, answer.text
            frames = answer.json()["frames"]
            expected_ts: list[str] = []
            expected_rms: list[np.ndarray] = []
            expected_mel: list[np.ndarray] = []
            for seq in range(3):
                samples = bodies[(sensor, seq)]
                n = frame_count(len(samples), s.n_fft, s.hop)
                start = START_NS + seq * int(CHUNK_S * 1e9)
                expected_ts += [
                    rfc3339(us) for us in frame_times_us(start, n, s.hop, rate).tolist()
                ]
                features = extractor(samples, rate)
                expected_rms.append(features.rms)
                expected_mel.append(features.mel)
            assert [f["ts"] for f in frames] == expected_ts
            assert status["frames"] == len(expected_ts)
            np.testing.assert_allclose(
                [f["rms"] for f in frames], np.concatenate(expected_rms), rtol=1e-6
            )
            np.testing.assert_allclose(
                [f["mel"] for f in frames], np.concatenate(expected_mel), rtol=1e-6
            )
            assert set(frames[0]) == {"ts", *FEATURE_FIELDS}
            assert len(frames[0]["mfcc"]) == s.n_mfcc

        assert await queue_depth(ch, s.queue) == 0


async def test_redelivered_and_republished_chunks_add_nothing(topology: config.Settings) -> None:
    s = topology
    samples = tone(CHUNK_S, 16000)
    async with running(s) as service, channel(s.amqp_url) as ch:
        for _ in range(3):
            await publish_pcm(ch, s.audio_exchange, "dup", 0, samples, 16000)
        await publish_pcm(ch, s.audio_exchange, "dup", 1, samples, 16000, start_ns=START_NS + 10**9)
        await wait_for(lambda: _queue_empty(ch, s.queue))
        await wait_for(lambda: stored_at_least(s.database_url, 2))
        # Republished later, after the first copies were committed.
        await publish_pcm(ch, s.audio_exchange, "dup", 0, samples, 16000)
        await wait_for(lambda: _queue_empty(ch, s.queue))
        status = (await service.get("/v1/sensors/dup")).json()
    n = frame_count(len(samples), s.n_fft, s.hop)
    assert status["chunks"] == 2 and status["frames"] == 2 * n
    conn = await asyncpg.connect(s.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM frames") == 2 * n
        assert await conn.fetchval("SELECT count(*) FROM chunks") == 2
    finally:
        await conn.close()


async def _queue_empty(ch: object, queue: str) -> bool:
    return await queue_depth(ch, queue) == 0  # type: ignore[arg-type]


async def test_malformed_messages_are_dead_lettered_while_good_ones_flow(
    topology: config.Settings,
) -> None:
    s = topology
    good = wire.encode_pcm(tone(CHUNK_S, 16000), "s16le")

    def pcm(sensor: str, number: int, /, **over: object) -> dict[str, object]:
        headers = wire.headers_for(
            sensor, number, START_NS, sample_rate=16000, encoding="s16le", channels=1
        )
        headers.update(over)
        return {k: v for k, v in headers.items() if v is not None}

    bad = [
        ("no-seq", pcm("m1", 0, seq=None), good, "audio/pcm", "seq is missing"),
        ("bad-id", pcm("bad id!", 0), good, "audio/pcm", "sensor_id must match"),
        ("odd", pcm("m2", 0), good[:-1], "audio/pcm", "not a whole number"),
        (
            "nan",
            pcm("m3", 0, encoding="f32le"),
            np.array([np.nan] * 4, "<f4").tobytes(),
            "audio/pcm",
            "NaN",
        ),
        ("enc", pcm("m4", 0, encoding="mp3"), good, "audio/pcm", "encoding must be"),
        ("wav", pcm("m5", 0), b"RIFF\x00\x00\x00\x00WAVEjunk", "audio/wav", "wav:"),
        ("type", pcm("m6", 0), good, "text/plain", "content_type must be"),
        ("big", pcm("m7", 0), b"\x00" * (8 * 1024 * 1024 + 2), "audio/pcm", "limit is"),
    ]
    async with running(s) as service, channel(s.amqp_url) as ch:
        for seq, (name, headers, body, content_type, _) in enumerate(bad):
            await publish(
                ch, s.audio_exchange, body, headers, content_type=content_type, message_id=name
            )
            await publish(ch, s.audio_exchange, good, pcm("ok", seq), message_id=f"ok:{seq}")
        await wait_for(lambda: stored_at_least(s.database_url, len(bad)))
        await wait_for(lambda: _queue_depth_is(ch, s.dead_queue, len(bad)))
        reasons = {}
        for _ in bad:
            got = await ch.basic_get(s.dead_queue, no_ack=True)
            props = got.header.properties
            reasons[props.message_id] = props.headers["x-error"]
            assert props.headers["x-original-routing-key"].startswith("sensor.")
            original = next(b for b in bad if b[0] == props.message_id)
            assert got.body == original[2], "the dead copy keeps the body"
            assert props.content_type == original[3]
        for name, _, _, _, reason in bad:
            assert reason in reasons[name], (name, reasons[name])
        assert await queue_depth(ch, s.queue) == 0, "originals are acked"
        assert (await service.get("/v1/sensors/ok")).json()["chunks"] == len(bad)
        assert (await service.get("/readyz")).status_code == 200, "nothing crashed"


async def _queue_depth_is(ch: object, queue: str, n: int) -> bool:
    return await queue_depth(ch, queue) == n  # type: ignore[arg-type]


async def test_pagination_walks_a_range_without_gaps_or_repeats(topology: config.Settings) -> None:
    s = topology
    async with running(s) as service, channel(s.amqp_url) as ch:
        await publish_series(ch, s.audio_exchange, "pager", range(6), seconds=1.0)
        await wait_for(lambda: stored_at_least(s.database_url, 6))
        total = (await service.get("/v1/sensors/pager")).json()["frames"]
        seen: list[str] = []
        params = {
            "start": rfc3339(START_NS // 1000),
            "end": rfc3339(START_NS // 1000 + 6 * 10**6),
            "limit": "17",
        }
        cursor = None
        while True:
            page = (
                await service.get(
                    "/v1/sensors/pager/features", **params, **({"cursor": cursor} if cursor else {})
                )
            ).json()
            seen += [f["ts"] for f in page["frames"]]
            cursor = page["next"]
            if cursor is None:
                break
    assert len(seen) == total == 6 * frame_count(16000, s.n_fft, s.hop)
    assert seen == sorted(set(seen))


async def test_missing_sequence_numbers_are_reported(topology: config.Settings) -> None:
    s = topology
    async with running(s) as service, channel(s.amqp_url) as ch:
        await publish_series(ch, s.audio_exchange, "gappy", (0, 1, 4, 7), seconds=0.1)
        await wait_for(lambda: stored_at_least(s.database_url, 4))
        status = (await service.get("/v1/sensors/gappy")).json()
    assert status["last_seq"] == 7
    assert status["missing_seq"] == [[2, 3], [5, 6]]
