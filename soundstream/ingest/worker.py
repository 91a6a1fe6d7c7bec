"""Start-up of each spawned extraction process.

Ctrl-C in a terminal signals the whole process group, pool workers included. The
supervisor drains on SIGINT and still needs its workers for the chunks in flight,
so workers ignore it and leave shutdown to the supervisor. Imports only the math.

``memory_mb`` caps the worker's address space (``RLIMIT_AS``): a chunk that needs
more fails in that worker (``MemoryError``, or the worker dies) instead of taking
the machine's memory; the extractor then returns that chunk to the queue, where
the broker's delivery limit ends its retries.
"""

from __future__ import annotations

import resource
import signal

from soundstream.core.features import warm_up
from soundstream.core.fields import FeatureParams


def init(params: FeatureParams, memory_mb: int = 0) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warm_up(params)
