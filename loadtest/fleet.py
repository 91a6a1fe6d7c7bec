"""What this process's sensors have published: for the readers, which sensors hold
data and up to when; for the final check, which chunks the broker confirmed.

The report is one JSON file per Locust process (``sensors-<pid>.json``):
``{"sensors": {sensor_id: {"confirmed": [seq, ...], "failed": [seq, ...]}}}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class _Record:
    confirmed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    last_end_ns: int | None = None  # of the last confirmed chunk


class Fleet:
    def __init__(self) -> None:
        self._sensors: dict[str, _Record] = {}

    def add(self, sensor_id: str) -> None:
        self._sensors.setdefault(sensor_id, _Record())

    def confirmed(self, sensor_id: str, seq: int, end_ns: int) -> None:
        record = self._sensors[sensor_id]
        record.confirmed.append(seq)
        record.last_end_ns = end_ns

    def failed(self, sensor_id: str, seq: int) -> None:
        self._sensors[sensor_id].failed.append(seq)

    def live(self) -> dict[str, int]:
        """Sensors with a confirmed chunk: the end of their last one, in epoch ns."""
        return {
            sensor_id: record.last_end_ns
            for sensor_id, record in self._sensors.items()
            if record.last_end_ns is not None
        }

    def write_report(self, folder: Path) -> Path | None:
        if not self._sensors:
            return None
        path = folder / f"sensors-{os.getpid()}.json"
        sensors = {
            sensor_id: {"confirmed": record.confirmed, "failed": record.failed}
            for sensor_id, record in sorted(self._sensors.items())
        }
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sensors": sensors}))
        return path


def read_reports(folder: Path) -> dict[str, set[int]]:
    """The confirmed seqs of every sensor in the reports under ``folder``."""
    confirmed: dict[str, set[int]] = {}
    for path in sorted(folder.glob("sensors-*.json")):
        for sensor_id, record in json.loads(path.read_text())["sensors"].items():
            confirmed.setdefault(sensor_id, set()).update(record["confirmed"])
    return confirmed
