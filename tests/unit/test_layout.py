"""The package's layering, checked by importing each part in a fresh interpreter.

``soundstream.core`` is pure computation: it may use numpy (and FFTW for the
features), never a broker, database, web or logging library. The API role must
not pay for FFTW: the field names it needs live in ``core.fields``.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import soundstream.core

IO_LIBRARIES = frozenset(
    {"aiormq", "pamqp", "asyncpg", "anyio", "starlette", "uvicorn", "structlog"}
)


def imported_by(module: str) -> set[str]:
    """Top-level names of every module that importing ``module`` loads."""
    code = (
        f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return set(out.split())


@pytest.mark.parametrize(
    "module",
    sorted(f"soundstream.core.{m.name}" for m in pkgutil.iter_modules(soundstream.core.__path__)),
)
def test_core_modules_import_no_io_library(module: str) -> None:
    assert imported_by(module) & IO_LIBRARIES == set()


@pytest.mark.parametrize("module", ["soundstream.http.app", "soundstream.store.read"])
def test_the_read_side_does_not_import_fftw(module: str) -> None:
    assert "pyfftw" not in imported_by(module)
