"""Locust's CSV statistics, read back as rows, and the table a run prints."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOTAL = "total"


@dataclass(frozen=True)
class Row:
    type: str  # GET, AMQP, ...; empty for Locust's "Aggregated" line
    name: str
    requests: int
    failures: int
    rps: float
    p50: float | None  # ms; None without requests
    p95: float | None
    p99: float | None
    max_ms: float | None

    @property
    def key(self) -> str:
        """How ``thresholds.toml`` names it: "TYPE NAME", or "total"."""
        return TOTAL if not self.type and self.name == "Aggregated" else f"{self.type} {self.name}"

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def read_stats(path: Path) -> list[Row]:
    """What Locust writes with ``--json-file``: one entry per request name with its
    response time histogram (milliseconds, rounded as Locust rounds them). A last row,
    ``total``, adds them up as Locust's "Aggregated" line does."""
    entries = json.loads(path.read_text())
    if not entries:
        return []
    # Requests/s over the whole run, as Locust reports them.
    duration = max(e["last_request_timestamp"] or 0 for e in entries) - min(
        e["start_time"] for e in entries
    )
    total: Counter[int] = Counter()
    rows = []
    for entry in sorted(entries, key=lambda e: (e["method"] != "AMQP", e["method"], e["name"])):
        histogram = Counter({int(ms): n for ms, n in entry["response_times"].items()})
        total.update(histogram)
        rows.append(_row(entry["method"], entry["name"], entry, histogram, duration))
    summed = {
        "num_requests": sum(e["num_requests"] for e in entries),
        "num_failures": sum(e["num_failures"] for e in entries),
        "max_response_time": max(e["max_response_time"] for e in entries),
    }
    rows.append(_row("", "Aggregated", summed, total, duration))
    return rows


def read_exceptions(folder: Path) -> list[str]:
    """``exceptions-<pid>.json`` of the Locust file: errors raised in the users' code."""
    return [
        f"{error['count']}x {error['message']}"
        for path in sorted(folder.glob("exceptions-*.json"))
        for error in json.loads(path.read_text())
    ]


def percentile(histogram: Counter[int], count: int, share: float) -> float | None:
    """The response time ``share`` of the requests finished within, as Locust takes it
    (its ``calculate_response_time_percentile``)."""
    if not count:
        return None
    within = int(count * share)
    seen = 0
    for ms in sorted(histogram, reverse=True):
        seen += histogram[ms]
        if count - seen <= within:
            return float(ms)
    return 0.0


def _row(
    kind: str, name: str, entry: dict[str, Any], histogram: Counter[int], duration: float
) -> Row:
    count = entry["num_requests"]
    return Row(
        type=kind,
        name=name,
        requests=count,
        failures=entry["num_failures"],
        rps=count / duration if duration > 0 else 0.0,
        p50=percentile(histogram, count, 0.50),
        p95=percentile(histogram, count, 0.95),
        p99=percentile(histogram, count, 0.99),
        max_ms=float(entry["max_response_time"]) if count else None,
    )


def table(rows: list[Row]) -> str:
    header = ("request", "count", "fail", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms")
    lines = [
        (
            row.key,
            str(row.requests),
            f"{row.error_rate:.1%}",
            f"{row.rps:.1f}",
            _show(row.p50),
            _show(row.p95),
            _show(row.p99),
            _show(row.max_ms),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def format_line(cells: tuple[str, ...]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    return "\n".join(format_line(line) for line in [header, *lines])


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
