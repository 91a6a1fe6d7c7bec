"""``scripts/loadtest``: run ``locustfile.py`` headless and judge the run.

Without ``--host`` it starts a service of its own (``soundstream serve`` with both
roles on a new database and new AMQP names, see ``local``), loads it, checks that every
confirmed chunk was stored, and removes it all. With ``--host URL`` (and
``--amqp-url URL`` unless ``--sensors 0``) it loads that deployment instead, with the
key(s) in ``LOADTEST_API_KEY``, and checks what was stored through the API.

It prints a table per request, then one line per broken limit of ``thresholds.toml``.
Exit status: 0 the run kept every limit, 1 it did not (or lost a chunk), 2 the run
could not be made. Locust's own files (``locust_stats.json``, ``report.html``), the
service's log and ``summary.json`` are left in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import anyio

from loadtest import report, thresholds, verify
from loadtest.fleet import read_reports
from loadtest.local import SetupError, Target, local_service
from loadtest.thresholds import Config, ConfigError, Profile

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
# Locust lets a sensor finish the publish in flight when the time is up.
STOP_TIMEOUT_S = 10
LOCUST_GRACE_S = 60  # beyond the run time, before Locust is taken for stuck
LOCUST_QUIT_S = 10  # for Locust to end by itself once interrupted
STATS = "locust_stats.json"
EXAMPLES = """\
examples:
  scripts/loadtest                  60 s against a service of its own (make loadtest)
  scripts/loadtest --profile ci     the short run of the tests
  LOADTEST_API_KEY=key1,key2 \\
  LOADTEST_AMQP_URL=amqps://user:password@broker.example.org:5671/ \\
  scripts/loadtest --host https://api.example.org --run-time 5m
                                    a deployment; readers take the keys in turn
                                    (secrets in the environment, not in ps)
"""


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/loadtest",
        description="Load soundstream with Locust (HTTP readers, AMQP sensors) and check "
        "the thresholds. Arguments after -- go to Locust as they are.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="default", help="a [run.NAME] of the thresholds")
    parser.add_argument(
        "--thresholds",
        type=Path,
        default=ROOT / "loadtest" / "thresholds.toml",
        help="profiles and limits (default: loadtest/thresholds.toml)",
    )
    parser.add_argument(
        "--out", type=Path, help="folder for the results (default: under loadtest/results)"
    )
    parser.add_argument(
        "--host", help="load this deployment (https://...) instead of a local service"
    )
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("LOADTEST_AMQP_URL"),
        help=f"broker the sensors publish to (env LOADTEST_AMQP_URL; default {DEFAULT_AMQP}, "
        "which a local service uses too)",
    )
    parser.add_argument(
        "--exchange", default="soundstream.audio", help="audio exchange (with --host)"
    )
    parser.add_argument(
        "--pg-admin-url",
        default=os.environ.get("LOADTEST_PG_ADMIN_URL", DEFAULT_PG),
        help="where a local run makes its database (env LOADTEST_PG_ADMIN_URL)",
    )
    parser.add_argument("--sensors", type=int, help="override the profile's sensor users")
    parser.add_argument("--readers", type=int, help="override the profile's reader users")
    parser.add_argument("--spawn-rate", type=float, help="override the profile's spawn rate")
    parser.add_argument("--run-time", help="override the profile's run time (60s, 5m, ...)")
    parser.add_argument(
        "--rate-limited-ok", action="store_true", help="count 429 answers as successes"
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip checking that every chunk was stored"
    )
    given = sys.argv[1:] if argv is None else argv
    cut = given.index("--") if "--" in given else len(given)
    args = parser.parse_args(given[:cut])
    args.locust_args = given[cut + 1 :]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        config = thresholds.load(args.thresholds)
        profile = _profile(config, args)
        if args.host and profile.sensors and not args.amqp_url:
            raise ConfigError("--host with sensors needs --amqp-url (or LOADTEST_AMQP_URL)")
        started = datetime.now(UTC)
        run = Run(
            run_id=started.strftime("%H%M%S") + f"{random.getrandbits(16):04x}",
            out=args.out
            or ROOT / "loadtest" / "results" / f"{args.profile}-{started:%Y%m%dT%H%M%SZ}",
            profile=profile,
        )
        run.out.mkdir(parents=True, exist_ok=True)
        outcome = anyio.run(_load, args, config, run)
    except (ConfigError, SetupError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # The service was drained and removed on the way out.
        print("loadtest: interrupted", file=sys.stderr)
        return 130
    return _judge(config, run, outcome)


@dataclass(frozen=True)
class Run:
    run_id: str  # in every sensor id and in the local service's names
    out: Path
    profile: Profile


@dataclass(frozen=True)
class Outcome:
    host: str
    verdict: verify.Verdict | None  # None: not checked
    problems: list[str]  # found while loading: a failed check, the service's exit


def _profile(config: Config, args: argparse.Namespace) -> Profile:
    if args.profile not in config.profiles:
        known = ", ".join(sorted(config.profiles))
        raise ConfigError(f"no profile {args.profile!r} in {args.thresholds} (known: {known})")
    profile = config.profiles[args.profile]
    changes = {
        name: value
        for name in ("sensors", "readers", "spawn_rate", "run_time")
        if (value := getattr(args, name)) is not None
    }
    profile = replace(profile, **changes)
    thresholds.run_seconds(profile.run_time)
    if profile.sensors < 0 or profile.readers < 0 or profile.sensors + profile.readers == 0:
        raise ConfigError("needs at least one sensor or reader")
    return profile


async def _load(args: argparse.Namespace, config: Config, run: Run) -> Outcome:
    """Set up (or take) the target, run Locust against it, check what was stored."""
    profile, problems = run.profile, []
    verdict = None
    async with AsyncExitStack() as stack:
        service = None
        if args.host is None:
            service = await stack.enter_async_context(
                local_service(
                    admin_url=args.pg_admin_url,
                    amqp_url=args.amqp_url or DEFAULT_AMQP,
                    settings={**config.local_env, **profile.service_env},
                    run_id=run.run_id,
                    out=run.out,
                )
            )
            target = service.target
            print(f"loadtest: local service at {target.host}, exchange {target.exchange}")
        else:
            target = Target(
                host=args.host,
                amqp_url=args.amqp_url or DEFAULT_AMQP,
                exchange=args.exchange,
                api_key=os.environ.get("LOADTEST_API_KEY", ""),
            )
        print(
            f"loadtest: {profile.sensors} sensors + {profile.readers} readers for "
            f"{profile.run_time} against {target.host} (run {run.run_id}, results in {run.out})",
            flush=True,
        )
        code = await _locust(target, args, run)
        # 1: some request failed, which the limits judge.
        if code not in (0, 1) or not (run.out / STATS).exists():
            raise SetupError(f"locust exited with {code}, see its output above")
        if not args.no_verify and profile.sensors:
            try:
                verdict = await _verify(target, run.out, config.drain_timeout_s)
            except Exception as exc:
                problems.append(f"could not check what was stored: {exc!r}")
    # The service has stopped (and its clean-up ran): its exit status counts too.
    if service is not None and service.exit_code != 0:
        problems.append(f"the service exited with {service.exit_code} (see {service.log})")
    return Outcome(target.host, verdict, problems)


async def _verify(target: Target, out: Path, timeout_s: float) -> verify.Verdict:
    confirmed = read_reports(out)
    if target.database_url is not None:
        fetch = verify.from_database(target.database_url)
    else:
        fetch = verify.from_api(target.host, target.api_key)
    return await verify.wait_stored(confirmed, fetch, timeout_s)


def _judge(config: Config, run: Run, outcome: Outcome) -> int:
    """Print the table and every breach; the exit status."""
    rows = report.read_stats(run.out / STATS)
    kinds = {"AMQP"} if run.profile.sensors else set()
    kinds |= {"GET"} if run.profile.readers else set()
    breaches = thresholds.check(rows, config, kinds=kinds, latency=run.profile.latency_limits)
    breaches += [f"user code raised {line}" for line in report.read_exceptions(run.out)]
    verdict = outcome.verdict
    if verdict is not None and not verdict.ok:
        lost = ", ".join(f"{s} {seqs[:5]}" for s, seqs in sorted(verdict.missing.items())[:5])
        breaches.append(
            f"{verdict.confirmed - verdict.stored} confirmed chunks never stored: {lost}"
        )
    breaches += outcome.problems
    print()
    print(report.table(rows))
    if verdict is not None:
        print(f"\nnothing lost: {verdict}" if verdict.ok else f"\n{verdict}")
    for breach in breaches:
        print(f"loadtest: breach: {breach}", file=sys.stderr)
    summary = {
        "profile": asdict(run.profile),
        "host": outcome.host,
        "run_id": run.run_id,
        "rows": [asdict(row) | {"key": row.key} for row in rows],
        "verify": None if verdict is None else asdict(verdict),
        "breaches": breaches,
    }
    (run.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"loadtest: {'failed' if breaches else 'passed'} ({run.out})")
    return 1 if breaches else 0


async def _locust(target: Target, args: argparse.Namespace, run: Run) -> int:
    profile, out = run.profile, run.out
    kinds = (("SensorUser", profile.sensors), ("DashboardReader", profile.readers))
    classes = [name for name, count in kinds if count]
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--users",
        str(profile.sensors + profile.readers),
        "--spawn-rate",
        str(profile.spawn_rate),
        "--run-time",
        profile.run_time,
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        "--host",
        target.host,
        "--json-file",
        str(out / STATS.removesuffix(".json")),  # Locust adds .json
        "--html",
        str(out / "report.html"),
        "--sensors",
        str(profile.sensors),
        "--exchange",
        target.exchange,
        "--run-id",
        run.run_id,
        "--sample-rate",
        str(profile.sample_rate),
        "--chunk-ms",
        str(profile.chunk_ms),
        "--reader-wait",
        f"{profile.reader_wait[0]},{profile.reader_wait[1]}",
        "--report-dir",
        str(out),
        *(["--rate-limited-ok"] if args.rate_limited_ok else []),
        *args.locust_args,
        *classes,
    ]
    # Secrets go by environment, never on a command line others can read.
    env = {name: value for name, value in os.environ.items() if not name.startswith("LOCUST_")}
    env.update(LOADTEST_AMQP_URL=target.amqp_url, LOADTEST_API_KEY=target.api_key)
    timeout = profile.run_seconds + STOP_TIMEOUT_S + LOCUST_GRACE_S
    process = await anyio.open_process(
        command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=None, stderr=None
    )
    try:
        with anyio.fail_after(timeout):
            return await process.wait()
    except TimeoutError as exc:
        raise SetupError(f"locust still running {timeout} s after its start") from exc
    finally:
        with anyio.CancelScope(shield=True):
            # Ctrl-C reached Locust too: it saves its statistics and ends by itself.
            with anyio.move_on_after(LOCUST_QUIT_S):
                await process.wait()
            if process.returncode is None:
                process.terminate()
                await process.wait()


if __name__ == "__main__":
    sys.exit(main())
