"""The dead copy's headers: the original's that can be sent again, plus the reason."""

from __future__ import annotations

from soundstream.core import wire
from soundstream.ingest import deadcopy


def pcm_headers(**extra: object) -> dict[str, object]:
    headers = wire.headers_for(
        "mic-1", 7, 1_700_000_000_000_000_000, sample_rate=16000, encoding="s16le", channels=1
    )
    return {**headers, **extra}


def test_dead_letter_headers_keep_the_original_and_add_the_reason() -> None:
    original = pcm_headers(trace={"id": [1, "a", None]})
    headers = deadcopy.dead_letter_headers(original, "header seq is missing", "sensor.mic-1")
    assert headers == {
        **original,
        "x-error": "header seq is missing",
        "x-original-routing-key": "sensor.mic-1",
    }
    assert original == pcm_headers(trace={"id": [1, "a", None]}), "the input is not changed"


def test_dead_letter_headers_replace_and_record_what_cannot_be_sent() -> None:
    original = {
        "sensor_id": b"\xffmic",
        "seq": 2**64,
        "nested": [1, {"deep": 1e300}],
        "k" * 129: 1,
        "x-error": "an old reason",
        "x-dropped-headers": "from an earlier dead-lettering",
        "fine": "yes",
    }
    headers = deadcopy.dead_letter_headers(original, "why", None)
    assert headers == {
        "sensor_id": bytearray(b"\xffmic"),
        "fine": "yes",
        "x-error": "why",
        "x-original-routing-key": "",
        "x-dropped-headers": [
            "seq: integer outside 64 bits",
            "nested: float beyond the 32-bit range",
            f"{'k' * 60!r}...: key is 129 bytes, over 128",
        ],
        "x-converted-headers": ["sensor_id"],
    }


def test_dead_letter_headers_of_headers_that_are_not_a_table() -> None:
    assert deadcopy.dead_letter_headers(["a"], "why", "sensor.x") == {
        "x-error": "why",
        "x-original-routing-key": "sensor.x",
        "x-dropped-headers": ["(headers): array, not a table"],
    }
    assert deadcopy.dead_letter_headers(None, "why", "sensor.x") == {
        "x-error": "why",
        "x-original-routing-key": "sensor.x",
    }
