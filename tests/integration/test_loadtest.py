"""``scripts/loadtest --profile ci``: the short Locust run CI makes, against a service
of its own. Locust monkey-patches the process that imports it, so it only ever runs
as a subprocess here."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from testenv import AMQP_URL, PG_ADMIN_URL

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_the_ci_load_run_passes_with_both_kinds_of_load(tmp_path: Path) -> None:
    env = dict(os.environ, LOADTEST_AMQP_URL=AMQP_URL, LOADTEST_PG_ADMIN_URL=PG_ADMIN_URL)
    result = subprocess.run(
        [str(ROOT / "scripts" / "loadtest"), "--profile", "ci", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "nothing lost" in result.stdout

    # Locust's own statistics, not the runner's reading of them.
    entries = json.loads((tmp_path / "locust_stats.json").read_text())
    counts = {(e["method"], e["name"]): e["num_requests"] for e in entries}
    assert counts.get(("AMQP", "publish chunk"), 0) > 0, counts
    assert sum(n for (method, _), n in counts.items() if method == "GET") > 0, counts
    assert counts.get(("GET", "/v1/sensors/{id}/features"), 0) > 0, counts

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["breaches"] == []
    assert summary["verify"]["missing"] == {}
    assert summary["verify"]["confirmed"] == counts[("AMQP", "publish chunk")]
