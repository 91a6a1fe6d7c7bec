"""Every setting: its default, a good value, and what a bad one gets."""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from soundstream import config
from soundstream.errors import SettingsError

# Loopback: without API keys, the default 0.0.0.0 needs SOUNDSTREAM_OPEN_API.
LOCAL = {"SOUNDSTREAM_HTTP_HOST": "127.0.0.1"}


def load(environ: dict[str, str]) -> config.Settings:
    return config.load({**LOCAL, **environ})


def test_defaults_match_the_design() -> None:
    s = config.load({"SOUNDSTREAM_OPEN_API": "true"})
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.database_url.startswith("postgresql://")
    assert (s.http_host, s.http_port) == ("0.0.0.0", 8080)
    assert s.roles == {"ingest", "api"}
    assert (s.n_fft, s.hop, s.n_mels, s.n_mfcc, s.rolloff) == (1024, 512, 32, 13, 0.85)
    assert s.api_key_digests == () and s.open_api is True
    assert (s.rate_limit, s.rate_burst, s.max_requests) == (50.0, 100, 64)
    assert s.trusted_proxies == ()
    assert (s.audio_exchange, s.queue, s.dead_exchange, s.dead_queue) == (
        "soundstream.audio",
        "soundstream.features",
        "soundstream.dead",
        "soundstream.dead",
    )


def test_values_are_parsed() -> None:
    s = load(
        {
            "SOUNDSTREAM_HTTP_PORT": " 9000 ",
            "SOUNDSTREAM_ROLES": "api",
            "SOUNDSTREAM_N_FFT": "2048",
            "SOUNDSTREAM_API_KEYS": "k" * 16 + ", " + "j" * 20,
            "SOUNDSTREAM_AMQP_URL": "amqps://u:p@broker:5671/vh",
            "SOUNDSTREAM_ROLLOFF": "0.9",
            "SOUNDSTREAM_RETENTION_DAYS": "30",
        }
    )
    assert s.http_port == 9000 and s.roles == {"api"} and s.n_fft == 2048
    assert s.api_key_digests == (config.key_digest("k" * 16), config.key_digest("j" * 20))
    assert s.ingest is False and s.api is True
    assert s.rolloff == 0.9 and s.retention_days == 30


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        load({}).http_port = 1  # type: ignore[misc]


BAD = [
    ("SOUNDSTREAM_HTTP_PORT", "abc", "must be an integer"),
    ("SOUNDSTREAM_HTTP_PORT", "70000", "between 0 and 65535"),
    ("SOUNDSTREAM_ROLES", "ingest,web", "must be 'ingest', 'api'"),
    ("SOUNDSTREAM_ROLES", " , ", "must be 'ingest', 'api'"),
    ("SOUNDSTREAM_N_FFT", "8", "between 16"),
    ("SOUNDSTREAM_HOP", "0", "between 1"),
    ("SOUNDSTREAM_N_MELS", "-3", "between 1"),
    ("SOUNDSTREAM_ROLLOFF", "0", "must be in (0.0"),
    ("SOUNDSTREAM_ROLLOFF", "x", "must be a number"),
    ("SOUNDSTREAM_AMQP_URL", "http://broker", "must be a URL starting with amqp://"),
    ("SOUNDSTREAM_DATABASE_URL", "mysql://db", "postgresql://"),
    ("SOUNDSTREAM_API_KEYS", "short", "at least 16"),
    ("SOUNDSTREAM_LOG_FORMAT", "xml", "must be one of"),
    ("SOUNDSTREAM_HTTP_HOST", "a b", "host name"),
    ("SOUNDSTREAM_QUEUE", "", "non-empty"),
    ("SOUNDSTREAM_WORKERS", "0", "between 1"),
    ("SOUNDSTREAM_RETENTION_DAYS", "-1", "between 0"),
    ("SOUNDSTREAM_RETENTION_DAYS", "7d", "must be an integer"),
    ("SOUNDSTREAM_RATE_LIMIT", "-1", "must be in [0.0"),
    ("SOUNDSTREAM_RATE_LIMIT", "fast", "must be a number"),
    ("SOUNDSTREAM_RATE_LIMIT", "nan", "must be in [0.0"),
    ("SOUNDSTREAM_RATE_BURST", "0", "between 1"),
    ("SOUNDSTREAM_MAX_REQUESTS", "0", "between 1"),
    ("SOUNDSTREAM_MAX_LIVE_STREAMS", "0", "between 1"),
    ("SOUNDSTREAM_MAX_LIVE_STREAMS", "many", "must be an integer"),
    ("SOUNDSTREAM_LIVE_REPLAY_CHUNKS", "0", "between 1"),
    ("SOUNDSTREAM_LIVE_REPLAY_CHUNKS", "10001", "between 1"),
    ("SOUNDSTREAM_LIVE_SEND_TIMEOUT_S", "0", "must be in (0.0"),
    ("SOUNDSTREAM_LIVE_SEND_TIMEOUT_S", "soon", "must be a number"),
    ("SOUNDSTREAM_TRUSTED_PROXIES", "10.0.0.0/33", "CIDRs"),
    ("SOUNDSTREAM_TRUSTED_PROXIES", "10.0.0.0/8,10.0.0.1/8", "host bits set"),
    ("SOUNDSTREAM_TRUSTED_PROXIES", "alb.internal", "CIDRs"),
    ("SOUNDSTREAM_OPEN_API", "maybe", "must be true or false"),
]


@pytest.mark.parametrize(("name", "raw", "message"), BAD)
def test_bad_value_names_the_variable(name: str, raw: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load({name: raw})
    assert caught.value.variable == name
    assert str(caught.value).startswith(name + ": ")
    assert message in str(caught.value)


def test_combinations_are_checked() -> None:
    with pytest.raises(SettingsError, match="SOUNDSTREAM_HOP: must not exceed"):
        load({"SOUNDSTREAM_N_FFT": "256", "SOUNDSTREAM_HOP": "512"})
    with pytest.raises(SettingsError, match="SOUNDSTREAM_N_MFCC"):
        load({"SOUNDSTREAM_N_MELS": "10", "SOUNDSTREAM_N_MFCC": "13"})
    with pytest.raises(SettingsError, match="SOUNDSTREAM_PREFETCH"):
        load({"SOUNDSTREAM_PREFETCH": "3"})


def test_urls_are_never_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        load({"SOUNDSTREAM_DATABASE_URL": "mysql://user:hunter2@db/x"})
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(load({"SOUNDSTREAM_AMQP_URL": "amqp://u:hunter2@h/"}))


def test_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "db"
    secret.write_text("postgresql://app:s3cret@db:5432/sound\n")
    s = load({"SOUNDSTREAM_DATABASE_URL_FILE": str(secret)})
    assert s.database_url == "postgresql://app:s3cret@db:5432/sound"
    with pytest.raises(SettingsError, match="SOUNDSTREAM_API_KEYS_FILE: cannot read"):
        load({"SOUNDSTREAM_API_KEYS_FILE": str(tmp_path / "missing")})
    with pytest.raises(SettingsError, match="not both"):
        load({"SOUNDSTREAM_DATABASE_URL_FILE": str(secret), "SOUNDSTREAM_DATABASE_URL": "x"})


def test_prefetch_is_derived_from_the_buffers_within_the_byte_bound() -> None:
    roomy = {"SOUNDSTREAM_MAX_HELD_MB": "65536"}
    s = load({**roomy, "SOUNDSTREAM_WORKERS": "2", "SOUNDSTREAM_CHUNKS_PER_TASK": "4"})
    # A batch filling, two committing, and two tasks of 4 chunks for each worker.
    assert s.effective_prefetch == 3 * s.batch_max_chunks + 2 * 2 * 4
    assert load({**roomy, "SOUNDSTREAM_PREFETCH": "500"}).effective_prefetch == 500


def test_the_byte_bound_counts_each_body_and_the_tasks_in_flight() -> None:
    s = load({"SOUNDSTREAM_PREFETCH": "500", "SOUNDSTREAM_WORKERS": "2"})
    # 2 GiB, less 4 tasks in flight of up to 8 MiB each, over 8 MiB bodies.
    assert s.effective_prefetch == (2048 - 4 * 8) // 8 == 252
    assert s.held_bytes <= s.max_held_mb * 2**20
    small = load({"SOUNDSTREAM_PREFETCH": "500", "SOUNDSTREAM_MAX_BODY_KB": "64"})
    assert small.effective_prefetch == 500
    # Small bodies: a task carries at most chunks_per_task of them.
    assert small.task_bytes == small.chunks_per_task * 64 * 1024 < config.TASK_MAX_BYTES
    tight = load({"SOUNDSTREAM_MAX_HELD_MB": "40", "SOUNDSTREAM_WORKERS": "2"})
    assert tight.effective_prefetch == 1 and tight.held_bytes <= 40 * 2**20


def test_a_byte_bound_too_small_for_one_body_and_the_tasks_in_flight_is_refused() -> None:
    with pytest.raises(SettingsError, match="SOUNDSTREAM_MAX_HELD_MB: must be at least 40"):
        load({"SOUNDSTREAM_MAX_HELD_MB": "39", "SOUNDSTREAM_WORKERS": "2"})
    with pytest.raises(SettingsError, match=r"at least 72 .* 8 pool tasks"):
        load({"SOUNDSTREAM_MAX_HELD_MB": "64", "SOUNDSTREAM_WORKERS": "4"})
    fits = {"SOUNDSTREAM_MAX_HELD_MB": "16", "SOUNDSTREAM_MAX_BODY_KB": "64"}
    small = load({**fits, "SOUNDSTREAM_WORKERS": "2"})
    assert small.effective_prefetch == (16 - 4 * 1) * 16 == 192
    assert small.held_bytes <= 16 * 2**20


def test_prefetch_never_exceeds_what_amqp_can_carry() -> None:
    s = load(
        {"SOUNDSTREAM_PREFETCH": "65535", "SOUNDSTREAM_MAX_BODY_KB": "1",
         "SOUNDSTREAM_MAX_HELD_MB": "1048576"}
    )  # fmt: skip
    assert s.effective_prefetch == config.MAX_PREFETCH == 65535
    s = load(
        {"SOUNDSTREAM_BATCH_MAX_CHUNKS": "10000", "SOUNDSTREAM_WORKERS": "256",
         "SOUNDSTREAM_CHUNKS_PER_TASK": "1024", "SOUNDSTREAM_MAX_BODY_KB": "1",
         "SOUNDSTREAM_MAX_HELD_MB": "1048576"}
    )  # fmt: skip
    assert s.effective_prefetch == 65535


@pytest.mark.parametrize(
    ("files", "affinity", "expected"),
    [
        ({"sys/fs/cgroup/cpu.max": "max 100000\n"}, 8, 8),
        ({"sys/fs/cgroup/cpu.max": "150000 100000\n"}, 8, 2),
        ({"sys/fs/cgroup/cpu.max": "50000 100000\n"}, 8, 1),
        ({"sys/fs/cgroup/cpu.max": "400000 100000\n"}, 2, 2),
        ({"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "300000\n",
          "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, 8, 3),
        ({"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
          "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, 8, 8),
        ({}, 4, 4),
    ],
)  # fmt: skip
def test_workers_default_to_the_cpus_the_process_may_use(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str],
    affinity: int,
    expected: int,
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _: set(range(affinity)))
    assert config.available_cpus(tmp_path) == expected


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SOUNDSTREAM_DELIVERY_LIMIT", "0"),
        ("SOUNDSTREAM_MAX_HELD_MB", "8"),
        ("SOUNDSTREAM_MAX_BODY_KB", "8193"),
        ("SOUNDSTREAM_WORKER_MEMORY_MB", "8"),
        ("SOUNDSTREAM_DEAD_LETTER_TIMEOUT_S", "0"),
    ],
)
def test_bounds_of_the_memory_and_delivery_settings(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load({variable: value})


def test_limits_are_parsed() -> None:
    s = load(
        {
            "SOUNDSTREAM_RATE_LIMIT": "2.5",
            "SOUNDSTREAM_RATE_BURST": "7",
            "SOUNDSTREAM_MAX_REQUESTS": "3",
            "SOUNDSTREAM_TRUSTED_PROXIES": " 10.0.0.0/8, 2001:db8::/32,,192.0.2.7 ",
        }
    )
    assert (s.rate_limit, s.rate_burst, s.max_requests) == (2.5, 7, 3)
    assert s.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("192.0.2.7/32"),
    )
    assert load({"SOUNDSTREAM_RATE_LIMIT": "0"}).rate_limit == 0  # off


KEY = "s3cret-key-0123456789"


def test_keys_are_kept_as_digests_only(tmp_path: Path) -> None:
    s = load({"SOUNDSTREAM_API_KEYS": f"{KEY},\n{KEY}, another-key-0123456789"})
    assert s.api_key_digests == (
        hashlib.sha256(KEY.encode()).digest(),
        hashlib.sha256(b"another-key-0123456789").digest(),
    )
    secret = tmp_path / "keys"
    secret.write_text(f"{KEY}\n")
    from_file = load({"SOUNDSTREAM_API_KEYS_FILE": str(secret)})
    assert from_file.api_key_digests == s.api_key_digests[:1]
    for shown in (repr(s), str(s), repr(from_file)):
        assert KEY not in shown and s.api_key_digests[0].hex()[:12] not in shown
    assert all(KEY not in repr(value) for value in vars(s).values())


def test_a_bad_key_is_named_but_never_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        load({"SOUNDSTREAM_API_KEYS": f"{KEY},tooshort-secret"})
    assert caught.value.variable == "SOUNDSTREAM_API_KEYS"
    assert "tooshort" not in str(caught.value) and KEY not in str(caught.value)


OPEN_API_REFUSED = (
    "SOUNDSTREAM_OPEN_API: SOUNDSTREAM_API_KEYS is empty and SOUNDSTREAM_HTTP_HOST={host} is"
    " reachable beyond this machine: set API keys, or SOUNDSTREAM_OPEN_API=true to serve an"
    " open API on purpose"
)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.1.2.3", "api.example.com", "::ffff:10.0.0.1"]
)
def test_an_open_api_beyond_loopback_must_be_asked_for(host: str) -> None:
    env = {"SOUNDSTREAM_HTTP_HOST": host}
    with pytest.raises(SettingsError) as caught:
        config.load(env)
    assert caught.value.variable == "SOUNDSTREAM_OPEN_API"
    assert str(caught.value) == OPEN_API_REFUSED.format(host=host)
    with pytest.raises(SettingsError, match="SOUNDSTREAM_OPEN_API"):
        config.load({**env, "SOUNDSTREAM_ROLES": "api"})
    # Asked for, guarded by keys, or no API at all: fine.
    assert config.load({**env, "SOUNDSTREAM_OPEN_API": "true"}).open_api
    assert config.load({**env, "SOUNDSTREAM_API_KEYS": KEY}).api_key_digests
    assert config.load({**env, "SOUNDSTREAM_ROLES": "ingest"}).http_host == host
    # A settings object changed later is checked the same way.
    local = config.load({"SOUNDSTREAM_HTTP_HOST": "127.0.0.1"})
    with pytest.raises(SettingsError, match="SOUNDSTREAM_OPEN_API"):
        config.replace(local, http_host=host)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"],
)
def test_loopback_serves_without_keys(host: str) -> None:
    s = config.load({"SOUNDSTREAM_HTTP_HOST": host})
    assert s.api and not s.api_key_digests and not s.open_api


def serve_with(env: dict[str, str]) -> list[str]:
    """``soundstream serve`` with only ``env`` set: asserts it exits 2 before doing
    anything, and returns what it printed on stderr, line by line."""
    result = subprocess.run(
        [sys.executable, "-m", "soundstream", "serve"],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    return result.stderr.strip().splitlines()


def test_cli_refuses_an_open_api_it_was_not_asked_for() -> None:
    lines = serve_with({"SOUNDSTREAM_ROLES": "api"})
    assert lines == ["soundstream: configuration error: " + OPEN_API_REFUSED.format(host="0.0.0.0")]


def test_cli_exits_2_with_one_line_naming_the_variable() -> None:
    lines = serve_with({"SOUNDSTREAM_HTTP_PORT": "eighty"})
    assert len(lines) == 1
    assert "SOUNDSTREAM_HTTP_PORT" in lines[0] and "eighty" in lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SOUNDSTREAM_MAX_SENSORS", "0"),
        ("SOUNDSTREAM_MAX_SENSORS", "1001"),
        ("SOUNDSTREAM_MAX_RANGE_S", "0.5"),
        ("SOUNDSTREAM_MAX_STREAM_RANGE_S", "x"),
        ("SOUNDSTREAM_QUERY_TIMEOUT_S", "0"),
        ("SOUNDSTREAM_POOL_TIMEOUT_S", "-1"),
        ("SOUNDSTREAM_CURSOR_KEY", "too-short"),
    ],
)
def test_bounds_of_the_read_settings(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable) as caught:
        load({variable: value})
    assert "too-short" not in str(caught.value)  # a secret is never echoed


def test_the_cursor_key_is_the_setting_or_derived_from_the_database_url(tmp_path: Path) -> None:
    url = {"SOUNDSTREAM_DATABASE_URL": "postgresql://app:pw@db:5432/sound"}
    derived = load(url).cursor_secret
    assert derived == load(url).cursor_secret  # every replica of a deployment agrees
    assert derived != load({"SOUNDSTREAM_DATABASE_URL": "postgresql://other@db/x"}).cursor_secret
    assert load({"SOUNDSTREAM_CURSOR_KEY": "k" * 16}).cursor_secret == b"k" * 16
    secret = tmp_path / "cursor"
    secret.write_text("s" * 20 + "\n")
    assert load({"SOUNDSTREAM_CURSOR_KEY_FILE": str(secret)}).cursor_secret == b"s" * 20
    assert "k" * 16 not in repr(load({"SOUNDSTREAM_CURSOR_KEY": "k" * 16}))
