"""What runs in each spawned extraction process: its start-up, and its task.

A task takes chunks' samples as they came (s16le stays 2 bytes a sample on the way),
converts them, and returns each chunk's ``chunk_frames`` row ready
for COPY, so what crosses back to the main process is bytes, not arrays, and the
main process never computes frame times or encodes a frame.

Ctrl-C in a terminal signals the whole process group, pool workers included. The
supervisor drains on SIGINT and still needs its workers for the chunks in flight,
so workers ignore it and leave shutdown to the supervisor.

``memory_mb`` caps what the worker may allocate beyond what it holds once started
(its data segment, ``RLIMIT_DATA``: heap and private mappings, not the code it
maps, set after the warm-up to the started size plus ``memory_mb``), so the limit
means the same whatever the libraries take at start-up: a chunk that needs
more fails in that worker (``MemoryError``, or the worker dies) instead of taking
the machine's memory; the extractor then returns that chunk to the queue, where
the broker's delivery limit ends its retries.
"""

from __future__ import annotations

import os
import resource
import signal

from soundstream.core.features import extract_many, warm_up
from soundstream.core.fields import FeatureParams
from soundstream.core.records import Encoded, Job
from soundstream.store.pgcopy import chunk_row


def init(params: FeatureParams, memory_mb: int = 0) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warm_up(params)
    if memory_mb:
        limit = data_segment_bytes() + memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def started() -> int:
    """A task that only shows the worker runs (its initializer has finished)."""
    return os.getpid()


def data_segment_bytes() -> int:
    """This process's data segment now (``VmData`` of /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmData line")


def encode_many(params: FeatureParams, jobs: list[Job]) -> list[Encoded]:
    """Each job's features, encoded as its row."""
    features = extract_many(params, [(job.chunk.samples, job.chunk.sample_rate) for job in jobs])
    return [chunk_row(job, params.hop, f) for job, f in zip(jobs, features, strict=True)]
