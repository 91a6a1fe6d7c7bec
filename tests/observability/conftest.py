"""tests/observability: the dashboard and alert rules of deploy/observability checked
with promtool, and against what a real service exposes and a real Prometheus scrapes.

The service is started and fed with the helpers of tests/integration (``support``)
and tests/faults (``replicas``); their folders are put on the import path here, as
pytest does for the folder of each test module it collects.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("integration", "faults"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.append(str(_TESTS / _folder))
