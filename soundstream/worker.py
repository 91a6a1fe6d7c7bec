"""Start-up of each spawned extraction process.

Ctrl-C in a terminal signals the whole process group, pool workers included. The
supervisor drains on SIGINT and still needs its workers for the chunks in flight,
so workers ignore it and leave shutdown to the supervisor. Imports only the math.
"""

from __future__ import annotations

import signal

from soundstream.config import FeatureParams
from soundstream.features import warm_up


def init(params: FeatureParams) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warm_up(params)
