"""What runs in each spawned extraction process: its start-up, and its task.

A task takes chunks' samples as they came (s16le stays 2 bytes a sample on the way),
converts them, and returns each chunk's ``chunk_frames`` row ready
for COPY, so what crosses back to the main process is bytes, not arrays, and the
main process never computes frame times or encodes a frame.

Ctrl-C in a terminal signals the whole process group, pool workers included. The
supervisor drains on SIGINT and still needs its workers for the chunks in flight,
so workers ignore it and leave shutdown to the supervisor.

``memory_mb`` caps the worker's address space (``RLIMIT_AS``): a chunk that needs
more fails in that worker (``MemoryError``, or the worker dies) instead of taking
the machine's memory; the extractor then returns that chunk to the queue, where
the broker's delivery limit ends its retries.
"""

from __future__ import annotations

import resource
import signal

from soundstream.core.features import extract_many, warm_up
from soundstream.core.fields import FeatureParams
from soundstream.core.records import Encoded, Job
from soundstream.store.pgcopy import chunk_row


def init(params: FeatureParams, memory_mb: int = 0) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warm_up(params)


def encode_many(params: FeatureParams, jobs: list[Job]) -> list[Encoded]:
    """Each job's features, encoded as its row."""
    features = extract_many(params, [(job.chunk.samples, job.chunk.sample_rate) for job in jobs])
    return [chunk_row(job, params.hop, f) for job, f in zip(jobs, features, strict=True)]
