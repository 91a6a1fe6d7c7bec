"""``thresholds.toml``: the run profiles and the limits a run must keep.

Read once and checked whole: an unknown key or a value of the wrong type is a
``ConfigError`` naming it, before anything starts.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from loadtest.report import Row

DEFAULT_KEY, TOTAL_KEY = "*", "total"
_RUN_TIME = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")


class ConfigError(Exception):
    """A thresholds file that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Profile:
    sensors: int
    readers: int
    spawn_rate: float
    run_time: str  # as Locust takes it: 60s, 5m, 1h30m
    reader_wait: tuple[float, float] = (0.5, 1.5)
    chunk_ms: int = 1000
    sample_rate: int = 16000
    service_env: dict[str, str] = field(default_factory=dict)
    # Whether the limits' max_p95_ms apply: off for a run that shares its machine with
    # other work (CI), where latency says more about the neighbours than the service.
    latency_limits: bool = True

    @property
    def run_seconds(self) -> int:
        return run_seconds(self.run_time)


@dataclass(frozen=True)
class Limit:
    max_error_rate: float | None = None
    max_p95_ms: float | None = None
    min_requests: int = 0


@dataclass(frozen=True)
class Config:
    profiles: dict[str, Profile]
    limits: dict[str, Limit]  # by "TYPE NAME", DEFAULT_KEY and TOTAL_KEY
    local_env: dict[str, str]
    drain_timeout_s: float

    def limit_for(self, key: str) -> Limit:
        """``key``'s own limits, each one it does not set taken from ``"*"``."""
        default = self.limits.get(DEFAULT_KEY, Limit())
        own = self.limits.get(key)
        if key == TOTAL_KEY:
            return own or Limit()
        if own is None:
            return default
        return Limit(
            max_error_rate=_first(own.max_error_rate, default.max_error_rate),
            max_p95_ms=_first(own.max_p95_ms, default.max_p95_ms),
            min_requests=own.min_requests,
        )


def load(path: Path) -> Config:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    _only(data, {"run", "local", "verify", "limits"}, "")
    profiles = {name: _profile(name, table) for name, table in _table(data, "run").items()}
    if not profiles:
        raise ConfigError(f"{path}: no [run.NAME] profile")
    local = _table(data, "local")
    _only(local, {"env"}, "local.")
    verify = _table(data, "verify")
    _only(verify, {"drain_timeout_s"}, "verify.")
    limits = {key: _limit(key, table) for key, table in _table(data, "limits").items()}
    return Config(
        profiles=profiles,
        limits=limits,
        local_env=_env(local.get("env", {}), "local.env"),
        drain_timeout_s=_number(verify.get("drain_timeout_s", 30), "verify.drain_timeout_s"),
    )


def check(rows: list[Row], config: Config, *, kinds: set[str], latency: bool = True) -> list[str]:
    """One line per limit the run broke; none when it passed. ``kinds`` are the request
    types the run made (``AMQP``, ``GET``): a limit's ``min_requests`` on a kind the
    run left out (no sensors, say) asks for nothing. Without ``latency`` no
    ``max_p95_ms`` is judged."""
    breaches = []
    seen = {row.key for row in rows}
    for key, limit in config.limits.items():
        kind = key.partition(" ")[0]
        if limit.min_requests and kind in kinds and key not in seen:
            breaches.append(f"{key}: no requests (at least {limit.min_requests} expected)")
    for row in rows:
        limit = config.limit_for(row.key)
        if row.requests < limit.min_requests:
            breaches.append(
                f"{row.key}: {row.requests} requests (at least {limit.min_requests} expected)"
            )
        if limit.max_error_rate is not None and row.error_rate > limit.max_error_rate:
            breaches.append(
                f"{row.key}: error rate {row.error_rate:.2%} ({row.failures} of "
                f"{row.requests}) over {limit.max_error_rate:.2%}"
            )
        if (
            latency
            and row.key != TOTAL_KEY
            and limit.max_p95_ms is not None
            and row.p95 is not None
            and row.p95 > limit.max_p95_ms
        ):
            breaches.append(f"{row.key}: p95 {row.p95:.0f} ms over {limit.max_p95_ms:.0f} ms")
    return breaches


def run_seconds(run_time: str) -> int:
    match = _RUN_TIME.fullmatch(run_time.strip())
    if not run_time.strip() or match is None:
        raise ConfigError(f"run_time {run_time!r}: use e.g. 60s, 5m or 1h30m")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _profile(name: str, table: Any) -> Profile:
    where = f"run.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    _only(table, {f.name for f in fields(Profile)}, f"{where}.")
    try:
        wait = table.get("reader_wait", [0.5, 1.5])
        low, high = (_number(value, f"{where}.reader_wait") for value in wait)
        profile = Profile(
            sensors=_count(table.get("sensors"), f"{where}.sensors"),
            readers=_count(table.get("readers"), f"{where}.readers"),
            spawn_rate=_number(table.get("spawn_rate"), f"{where}.spawn_rate"),
            run_time=str(table.get("run_time", "")),
            reader_wait=(low, high),
            chunk_ms=_count(table.get("chunk_ms", 1000), f"{where}.chunk_ms"),
            sample_rate=_count(table.get("sample_rate", 16000), f"{where}.sample_rate"),
            service_env=_env(table.get("service_env", {}), f"{where}.service_env"),
            latency_limits=_flag(table.get("latency_limits", True), f"{where}.latency_limits"),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.reader_wait must be [min, max] seconds") from exc
    run_seconds(profile.run_time)
    if not 0 <= low <= high:
        raise ConfigError(f"{where}.reader_wait must be [min, max] with 0 <= min <= max")
    if profile.spawn_rate <= 0 or profile.sensors + profile.readers == 0:
        raise ConfigError(f"{where}: needs users and a positive spawn_rate")
    return profile


def _limit(key: str, table: Any) -> Limit:
    where = f"limits.{key!r}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    _only(table, {"max_error_rate", "max_p95_ms", "min_requests"}, f"{where}.")
    rate, p95 = table.get("max_error_rate"), table.get("max_p95_ms")
    return Limit(
        max_error_rate=None if rate is None else _number(rate, f"{where}.max_error_rate"),
        max_p95_ms=None if p95 is None else _number(p95, f"{where}.max_p95_ms"),
        min_requests=_count(table.get("min_requests", 0), f"{where}.min_requests"),
    )


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a table")
    return value


def _only(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"unknown key {where}{unknown[0]} (known: {', '.join(sorted(allowed))})")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where} must be a number >= 0, got {value!r}")
    return float(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where} must be a whole number >= 0, got {value!r}")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    return value


def _env(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{where} must be a table of strings")
    return dict(value)


def _first(value: float | None, default: float | None) -> float | None:
    return default if value is None else value
