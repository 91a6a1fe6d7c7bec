"""The ``soundstream`` command: ``migrate``, ``serve``, ``simulate``.

Settings are built here, once, and handed down; a bad variable ends the process
with exit status 2 and one line naming it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
import structlog

from soundstream import config, logs
from soundstream.errors import RestartBudgetExhausted, SettingsError, TopologyMismatch

EXIT_CONFIG = 2
EXIT_FAILURE = 1


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {raw}")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="soundstream",
        description="Sensor audio in over AMQP, spectral features out over HTTP. "
        "Settings come from SOUNDSTREAM_* environment variables.",
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("migrate", help="create or upgrade the database schema (idempotent)")
    commands.add_parser("serve", help="run the service with the roles in SOUNDSTREAM_ROLES")
    sim = commands.add_parser("simulate", help="publish audio as N sensors (demos and load)")
    sim.add_argument("--sensors", type=_positive_int, required=True, help="number of sensors")
    sim.add_argument("--seconds", type=_positive_float, required=True, help="audio per sensor")
    sim.add_argument("--wav", type=Path, help="publish this WAV file, cut into chunks")
    sim.add_argument("--realtime", action="store_true", help="pace chunks to the wall clock")
    sim.add_argument("--chunk-ms", type=_positive_int, default=1000, help="chunk length (1000)")
    sim.add_argument("--encoding", choices=("s16le", "f32le"), default="s16le")
    sim.add_argument("--sensor-prefix", help="sensor id prefix (default: sim-HHMMSS)")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = config.load()
    except SettingsError as exc:
        print(f"soundstream: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(settings.log_level, settings.log_format)
    log = structlog.get_logger("soundstream")
    try:
        if args.command == "migrate":
            return _migrate(settings)
        if args.command == "serve":
            return _serve(settings)
        return _simulate(settings, args)
    except KeyboardInterrupt:
        return 130
    except (RestartBudgetExhausted, TopologyMismatch) as exc:
        log.critical("exiting", reason=str(exc))
        return EXIT_FAILURE
    except Exception as exc:
        log.critical("failed", command=args.command, error=f"{type(exc).__name__}: {exc}")
        return EXIT_FAILURE


def _migrate(settings: config.Settings) -> int:
    from soundstream.store.migrate import migrate

    applied = anyio.run(migrate, settings.database_url)
    print(f"schema up to date ({len(applied)} migration(s) applied)")
    return 0


def _serve(settings: config.Settings) -> int:
    from soundstream.supervisor import serve

    anyio.run(serve, settings, backend_options={"use_uvloop": True})
    return 0


def _simulate(settings: config.Settings, args: argparse.Namespace) -> int:
    from soundstream.sim.simulate import SimulateOptions, simulate

    options = SimulateOptions(
        sensors=args.sensors,
        seconds=args.seconds,
        wav=args.wav,
        realtime=args.realtime,
        chunk_ms=args.chunk_ms,
        encoding=args.encoding,
        sensor_prefix=args.sensor_prefix,
    )
    # SIGTERM stops it as Ctrl-C does (as a container's main process, a signal
    # without a handler would be ignored and the container killed after a timeout).
    signal.signal(signal.SIGTERM, _interrupt)
    summary = anyio.run(simulate, settings, options)
    print(summary)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
