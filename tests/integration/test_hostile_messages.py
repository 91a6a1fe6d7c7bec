"""Through the real broker: whatever a publisher puts in the headers, every message is
stored or dead-lettered with a reason, and the service stays ready.

Each example publishes a run of messages whose listed headers take values of every
AMQP field type the client can send (strings, integers of every width, floats,
decimals, booleans, timestamps, arrays, tables, byte arrays, void), mixed with good
chunks, and waits until every message is accounted for: a row in ``chunks`` or a copy
in the dead queue carrying ``x-error``.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp.commands import Basic
from support import START_NS, channel, queue_depth, running, stored_chunks, wait_for

from soundstream import config
from soundstream.core import wire

pytestmark = pytest.mark.slow

FIELD_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(width=32, allow_nan=False, allow_infinity=False),
        st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False),
        st.text(max_size=20),
        st.binary(max_size=20).map(bytearray),
        st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)).map(
            lambda d: d.replace(tzinfo=UTC, microsecond=0)
        ),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
LISTED = ("sensor_id", "seq", "start_ns", "sample_rate", "encoding", "channels")
GOOD_BODY = (np.zeros(2048, dtype="<i2")).tobytes()


@st.composite
def messages(draw: st.DrawFn, sensor: str) -> list[dict[str, Any]]:
    """Header tables for one sensor: good ones, and ones with hostile values."""
    out = []
    for seq in range(draw(st.integers(4, 8))):
        headers: dict[str, Any] = wire.headers_for(
            sensor, seq, START_NS + seq * 10**9, sample_rate=16000, encoding="s16le", channels=1
        )
        if draw(st.booleans()):
            for name in draw(st.lists(st.sampled_from(LISTED), min_size=1, max_size=3)):
                headers[name] = draw(FIELD_VALUES)
        out.append(headers)
    return out


counter = itertools.count()


@settings(max_examples=4, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_every_message_is_stored_or_dead_lettered(
    topology: config.Settings, data: st.DataObject
) -> None:
    s = topology
    sensor = f"hostile-{next(counter)}"
    tables = data.draw(messages(sensor))
    stored_before = await stored_chunks(s.database_url)
    async with running(s) as service, channel(s.amqp_url) as ch:
        dead_before = await queue_depth(ch, s.dead_queue)
        for seq, headers in enumerate(tables):
            confirmation = await ch.basic_publish(
                GOOD_BODY,
                exchange=s.audio_exchange,
                routing_key=f"sensor.{sensor}",
                properties=Basic.Properties(
                    content_type="audio/pcm",
                    message_id=wire.message_id(sensor, seq),
                    delivery_mode=2,
                    headers=headers,
                ),
            )
            assert isinstance(confirmation, Basic.Ack)

        async def accounted() -> bool:
            stored = await stored_chunks(s.database_url) - stored_before
            dead = await queue_depth(ch, s.dead_queue) - dead_before
            return stored + dead == len(tables)

        await wait_for(accounted, within=60)
        for _ in range(await queue_depth(ch, s.dead_queue) - dead_before):
            copy = await ch.basic_get(s.dead_queue, no_ack=True)
            assert (copy.header.properties.headers or {})["x-error"]
        assert (await service.get("/readyz")).status_code == 200
