"""One frozen settings object, built once from an environment mapping.

Every ``SOUNDSTREAM_*`` variable is parsed and checked here, so a bad value stops
the process at start-up with one line naming the variable, never later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeAlias

from soundstream.core.fields import FeatureParams
from soundstream.errors import SettingsError

PREFIX = "SOUNDSTREAM_"
# The wire format's largest body (DESIGN.md section 2; ``wire`` checks it); a
# deployment may lower it.
MAX_BODY_KB = 8 * 1024
# A spawned, warmed-up worker maps about 215 MB before it extracts anything.
MIN_WORKER_MEMORY_MB = 16  # a 1 s 48 kHz stereo chunk takes about 2 MB
# AMQP's prefetch-count is a 16-bit field.
MAX_PREFETCH = 65535
# The samples one pool task carries at most, in bytes (a longer chunk goes alone),
# so a worker holds one large chunk's frames at a time.
TASK_MAX_BYTES = 4 << 20
# Write batches committing at once, each on a connection of its own: the next batch
# goes to PostgreSQL while the last is still being written.
COMMITS_IN_FLIGHT = 2
MIB = 1024 * 1024
ROLES = frozenset({"ingest", "api"})
# Values that may be given as a file path instead (mounted secrets).
SECRET_FILE_VARIABLES = ("AMQP_URL", "DATABASE_URL", "API_KEYS", "CURSOR_KEY")
# Fields read from a variable of another name. API keys are hashed as they are
# parsed, so no plaintext key outlives ``load``.
VARIABLE_NAMES = {"api_key_digests": "API_KEYS"}

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def available_cpus(root: Path = Path("/")) -> int:
    """The CPUs this process may really use: its affinity mask, capped by a cgroup
    CPU quota (a container's ``limits.cpu``), not the host's core count."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs' worth of quota from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_*``; None if unlimited."""
    try:
        quota, period = (root / "sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        v1 = root / "sys/fs/cgroup/cpu"
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Settings:
    amqp_url: str = field(default="amqp://guest:guest@127.0.0.1:5672/", repr=False)
    database_url: str = field(
        default="postgresql://postgres@127.0.0.1:5432/soundstream", repr=False
    )
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    roles: frozenset[str] = ROLES
    # SHA-256 of each key (``key_digest``); the keys themselves are not kept.
    api_key_digests: tuple[bytes, ...] = field(default=(), repr=False)
    open_api: bool = False  # serve /v1 without keys beyond loopback, on purpose
    rate_limit: float = 50.0  # requests/s per client on /v1; 0: no limit
    rate_burst: int = 100
    max_requests: int = 64  # /v1 requests in flight at once
    # Live feature streams (Server-Sent Events) a replica keeps open at once; they
    # are bounded by this, not by max_requests.
    max_live_streams: int = 100
    # Chunks a live stream replays on resuming (Last-Event-ID) or opening (history=),
    # and how far behind the newest chunk a client may fall before it is dropped.
    live_replay_chunks: int = 60
    # How long a live stream waits for a client to take an event before dropping it.
    live_send_timeout_s: float = 10.0
    trusted_proxies: tuple[Network, ...] = ()
    max_sensors: int = 16  # sensors one /v1/features request may name
    max_range_s: float = 31 * 86_400.0  # end - start of a paged feature request
    max_stream_range_s: float = 86_400.0  # end - start of a streamed one
    query_timeout_s: float = 10.0  # PostgreSQL statement_timeout of API queries
    pool_timeout_s: float = 2.0  # waiting for a free API connection
    # Signs pagination cursors; empty: derived from the database URL, which every
    # replica of a deployment shares.
    cursor_key: str = field(default="", repr=False)

    # Flat, one per variable; ``features`` bundles them for the extractor.
    n_fft: int = FeatureParams.n_fft
    hop: int = FeatureParams.hop
    n_mels: int = FeatureParams.n_mels
    n_mfcc: int = FeatureParams.n_mfcc
    rolloff: float = FeatureParams.rolloff

    audio_exchange: str = "soundstream.audio"
    queue: str = "soundstream.features"
    binding_key: str = "sensor.#"
    dead_exchange: str = "soundstream.dead"
    dead_queue: str = "soundstream.dead"

    delivery_limit: int = 5
    max_held_mb: int = 2048
    max_body_kb: int = MAX_BODY_KB
    worker_memory_mb: int = 0  # 0: no limit
    dead_letter_timeout_s: float = 10.0

    workers: int = field(default_factory=available_cpus)
    chunks_per_task: int = 16
    batch_max_chunks: int = 64
    batch_max_frames: int = 4000
    batch_max_wait_ms: int = 100
    prefetch: int = 0  # 0: derived from the batch and pool sizes, see ``effective_prefetch``
    db_pool_size: int = 4
    retention_days: int = 0  # 0: keep everything
    drain_timeout_s: float = 20.0
    max_restarts: int = 5
    restart_window_s: float = 60.0
    log_level: str = "info"
    log_format: str = "auto"
    # Where traces go: from the standard OTEL_* variables (see ``trace_exporter``).
    trace_exporter: str = "none"

    @property
    def features(self) -> FeatureParams:
        return FeatureParams(self.n_fft, self.hop, self.n_mels, self.n_mfcc, self.rolloff)

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_kb * 1024

    @property
    def cursor_secret(self) -> bytes:
        """The key cursors are signed with: the setting, or one derived from the
        database URL (the same on every replica, never sent anywhere)."""
        if self.cursor_key:
            return self.cursor_key.encode()
        return hashlib.sha256(b"soundstream cursor key\0" + self.database_url.encode()).digest()

    @property
    def tasks_in_flight(self) -> int:
        """Pool tasks the extractor keeps in flight: two a worker, so that each has
        the next waiting while it works."""
        return 2 * self.workers

    @property
    def task_bytes(self) -> int:
        """The most samples one pool task carries, in bytes: ``chunks_per_task``
        bodies up to ``TASK_MAX_BYTES``, or one chunk that is larger on its own."""
        return max(min(TASK_MAX_BYTES, self.chunks_per_task * self.max_body_bytes),
                   self.max_body_bytes)  # fmt: skip

    @property
    def held_bytes(self) -> int:
        """The most the unsettled deliveries can cost the main process: each its
        body (its rows, once extracted, are smaller: under 1 byte a sample against
        2 or 4), plus the copy of every task in flight on its way to a worker."""
        return (
            self.effective_prefetch * self.max_body_bytes + self.tasks_in_flight * self.task_bytes
        )

    @property
    def effective_prefetch(self) -> int:
        """Unacked deliveries the broker may hand us.

        By count: one batch being filled and ``COMMITS_IN_FLIGHT`` committing (the
        broker hands out more only as their acks arrive), and every pool task in
        flight. By bytes: ``held_bytes`` within ``max_held_mb`` even if every
        delivery had the largest body. The smaller wins, and AMQP caps it at 65535.
        """
        by_count = self.prefetch or (
            (COMMITS_IN_FLIGHT + 1) * self.batch_max_chunks
            + self.tasks_in_flight * self.chunks_per_task
        )
        room = self.max_held_mb * MIB - self.tasks_in_flight * self.task_bytes
        by_bytes = room // self.max_body_bytes
        return max(1, min(by_count, by_bytes, MAX_PREFETCH))

    @property
    def ingest(self) -> bool:
        return "ingest" in self.roles

    @property
    def api(self) -> bool:
        return "api" in self.roles


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"must be an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value

    return parse


def _float(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"must be a number, got {raw!r}") from None
        if not (lo < value if lo_open else lo <= value) or not value <= hi:
            bound = "(" if lo_open else "["
            raise ValueError(f"must be in {bound}{lo}, {hi}], got {value}")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip()
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme not in schemes:
            # Never echo the value: URLs carry passwords.
            raise ValueError(
                f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
            )
        return value

    return parse


def _roles(raw: str) -> frozenset[str]:
    roles = frozenset(part.strip() for part in raw.split(",") if part.strip())
    unknown = roles - ROLES
    if unknown or not roles:
        raise ValueError(f"must be 'ingest', 'api' or 'ingest,api', got {raw!r}")
    return roles


def key_digest(key: str) -> bytes:
    """SHA-256 of an API key: keys are long random secrets, so a plain hash, not a
    slow password hash, is enough to make a leaked digest useless as a key."""
    return hashlib.sha256(key.encode()).digest()


def _key_digests(raw: str) -> tuple[bytes, ...]:
    keys = [part.strip() for part in re.split(r"[,\n]", raw) if part.strip()]
    if any(len(k) < 16 for k in keys):
        raise ValueError("every key must be at least 16 characters")  # never echo a key
    return tuple(dict.fromkeys(key_digest(k) for k in keys))


def _cursor_key(raw: str) -> str:
    value = raw.strip()
    if len(value) < 16:
        raise ValueError("must be at least 16 characters")  # never echo a secret
    return value


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def _networks(raw: str) -> tuple[Network, ...]:
    networks = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part))
        except ValueError as exc:
            raise ValueError(f"must be comma-separated CIDRs (e.g. 10.0.0.0/8); {exc}") from None
    return tuple(networks)


def _name(raw: str) -> str:
    value = raw.strip()
    if not value or len(value) > 255:
        raise ValueError(f"must be a non-empty name of at most 255 characters, got {raw!r}")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def _host(raw: str) -> str:
    value = raw.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"must be a host name or address, got {raw!r}")
    return value


PARSERS: dict[str, Callable[[str], Any]] = {
    "amqp_url": _url("amqp", "amqps"),
    "database_url": _url("postgresql", "postgres"),
    "http_host": _host,
    "http_port": _int(0, 65535),
    "roles": _roles,
    "api_key_digests": _key_digests,
    "open_api": _bool,
    "rate_limit": _float(0.0, 1_000_000.0),
    "rate_burst": _int(1, 1_000_000),
    "max_requests": _int(1, 100_000),
    "max_live_streams": _int(1, 100_000),
    "live_replay_chunks": _int(1, 10_000),
    "live_send_timeout_s": _float(0.0, 600.0, lo_open=True),
    "max_sensors": _int(1, 1000),
    "max_range_s": _float(1.0, 100 * 366 * 86_400.0),
    "max_stream_range_s": _float(1.0, 100 * 366 * 86_400.0),
    "query_timeout_s": _float(0.1, 3600.0),
    "pool_timeout_s": _float(0.01, 600.0),
    "cursor_key": _cursor_key,
    "trusted_proxies": _networks,
    "n_fft": _int(16, 65536),
    "hop": _int(1, 65536),
    "n_mels": _int(1, 512),
    "n_mfcc": _int(1, 512),
    "rolloff": _float(0.0, 1.0, lo_open=True),
    "audio_exchange": _name,
    "queue": _name,
    "binding_key": _name,
    "dead_exchange": _name,
    "dead_queue": _name,
    "delivery_limit": _int(1, 1000),
    "max_held_mb": _int(16, 1_048_576),
    "max_body_kb": _int(1, MAX_BODY_KB),
    "worker_memory_mb": _int(0, 1_048_576),
    "dead_letter_timeout_s": _float(0.0, 600.0, lo_open=True),
    "workers": _int(1, 256),
    "chunks_per_task": _int(1, 1024),
    "batch_max_chunks": _int(1, 10000),
    "batch_max_frames": _int(1, 1_000_000),
    "batch_max_wait_ms": _int(1, 60_000),
    "prefetch": _int(0, 65535),
    "db_pool_size": _int(1, 100),
    "retention_days": _int(0, 100_000),
    "drain_timeout_s": _float(0.0, 3600.0, lo_open=True),
    "max_restarts": _int(0, 1000),
    "restart_window_s": _float(0.0, 86400.0, lo_open=True),
    "log_level": _choice("debug", "info", "warning", "error"),
    "log_format": _choice("auto", "json", "console"),
}


def variable(name: str) -> str:
    return PREFIX + VARIABLE_NAMES.get(name, name.upper())


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from ``environ`` (default: the process environment).

    ``overrides`` are already-typed values that win over the environment (tests and
    the command line use them). Raises ``SettingsError`` naming the first bad variable.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name not in PARSERS:
            continue  # read from the standard variables of another project
        name = variable(f.name)
        raw = env.get(name)
        file_name = name + "_FILE"
        if name.removeprefix(PREFIX) in SECRET_FILE_VARIABLES and env.get(file_name):
            if raw is not None:
                raise SettingsError(file_name, f"set either {name} or {file_name}, not both")
            try:
                raw = Path(env[file_name]).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SettingsError(file_name, f"cannot read the file: {exc.strerror}") from exc
        if raw is None:
            continue
        try:
            values[f.name] = PARSERS[f.name](raw)
        except ValueError as exc:
            raise SettingsError(name, str(exc)) from exc
    values["trace_exporter"] = trace_exporter(env)
    values.update(overrides)
    settings = Settings(**values)
    _check_together(settings)
    return settings


TRACE_EXPORTERS = ("none", "otlp", "console")


def trace_exporter(env: Mapping[str, str]) -> str:
    """The span exporter the standard OpenTelemetry variables ask for: none unless
    ``OTEL_TRACES_EXPORTER`` names one or an OTLP endpoint is set (then OTLP over
    HTTP/protobuf, whose endpoint, headers and timeouts the exporter reads from
    ``OTEL_EXPORTER_OTLP_*`` itself); ``OTEL_SDK_DISABLED=true`` turns tracing off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None or not raw.strip():
        endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return "otlp" if any(env.get(name) for name in endpoints) else "none"
    chosen = raw.strip().lower()
    if chosen not in TRACE_EXPORTERS:
        raise SettingsError("OTEL_TRACES_EXPORTER", f"must be one of {', '.join(TRACE_EXPORTERS)}")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name)
        if chosen == "otlp" and protocol and protocol.strip() != "http/protobuf":
            raise SettingsError(name, "only http/protobuf is supported (the OTLP/HTTP exporter)")
    return chosen


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (a name other than
    ``localhost`` may resolve anywhere, so it is not)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _check_together(s: Settings) -> None:
    # An open API is a choice to state, never a default to stumble into: without
    # keys, /v1 is served beyond loopback only with SOUNDSTREAM_OPEN_API=true.
    if s.api and not s.api_key_digests and not s.open_api and not is_loopback(s.http_host):
        raise SettingsError(
            variable("open_api"),
            f"SOUNDSTREAM_API_KEYS is empty and SOUNDSTREAM_HTTP_HOST={s.http_host} is reachable"
            " beyond this machine: set API keys, or SOUNDSTREAM_OPEN_API=true to serve an open"
            " API on purpose",
        )
    if s.hop > s.n_fft:
        raise SettingsError(variable("hop"), f"must not exceed SOUNDSTREAM_N_FFT ({s.n_fft})")
    if s.n_mfcc > s.n_mels:
        raise SettingsError(variable("n_mfcc"), f"must not exceed SOUNDSTREAM_N_MELS ({s.n_mels})")
    if s.worker_memory_mb and s.worker_memory_mb < MIN_WORKER_MEMORY_MB:
        raise SettingsError(
            variable("worker_memory_mb"),
            f"must be 0 (no limit) or at least {MIN_WORKER_MEMORY_MB}",
        )
    least_mb = math.ceil((s.tasks_in_flight * s.task_bytes + s.max_body_bytes) / MIB)
    if s.max_held_mb < least_mb:
        raise SettingsError(
            variable("max_held_mb"),
            f"must be at least {least_mb} with these settings: one largest body"
            f" (SOUNDSTREAM_MAX_BODY_KB) and {s.tasks_in_flight} pool tasks in flight"
            f" ({s.task_bytes // MIB} MiB each)",
        )
    if s.prefetch and s.prefetch < s.batch_max_chunks:
        raise SettingsError(
            variable("prefetch"),
            f"must be 0 (derived) or at least SOUNDSTREAM_BATCH_MAX_CHUNKS ({s.batch_max_chunks})",
        )


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy with ``changes``, checked like a loaded one."""
    new = dataclasses.replace(settings, **changes)
    _check_together(new)
    return new
