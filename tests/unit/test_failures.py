"""One predicate for "a dependency is out of reach": what waits and what crashes."""

from __future__ import annotations

import asyncpg
import pytest
from aiormq import exceptions as amqp
from asyncpg.exceptions import _base as asyncpg_base

from soundstream.failures import describe, retryable, unavailable, undecodable

OUT_OF_REACH = [
    ConnectionRefusedError(111, "refused"),
    ConnectionResetError(104, "reset"),
    TimeoutError(),
    OSError(113, "no route to host"),
    amqp.AMQPConnectionError("Server connection unexpectedly closed"),
    amqp.ConnectionClosed(320, "CONNECTION_FORCED - broker shutdown"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.exceptions.DiskFullError("could not extend file"),
    asyncpg.InterfaceError(
        "cannot call Transaction.__aexit__(): the underlying connection is closed"
    ),
    asyncpg.InterfaceError("cannot perform operation: connection is closed"),
]
CRASHES = [
    amqp.AuthenticationError("ACCESS_REFUSED"),
    amqp.ProbableAuthenticationError("closed during login"),
    amqp.InvalidFrameError(
        "Could not unmarshal ContentHeader frame: year 56894094 is out of range"
    ),
    amqp.ConnectionFrameError(501, "FRAME_ERROR"),
    amqp.ConnectionNotAllowed(530, "NOT_ALLOWED"),
    amqp.ChannelPreconditionFailed(406, "PRECONDITION_FAILED - unknown delivery tag 7"),
    amqp.ChannelNotFoundEntity(404, "NOT_FOUND - no queue"),
    asyncpg_base.DataError("invalid input for query argument $1"),
    asyncpg.exceptions.DataError("value out of range"),
    asyncpg.UndefinedTableError('relation "chunks" does not exist'),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    ValueError("a bug"),
    KeyError("a bug"),
]


@pytest.mark.parametrize("exc", OUT_OF_REACH, ids=lambda e: type(e).__name__)
def test_a_dependency_out_of_reach_is_waited_for(exc: Exception) -> None:
    assert unavailable(exc)
    assert retryable(exc)
    assert unavailable(ExceptionGroup("pipeline", [exc, ExceptionGroup("inner", [exc])]))


@pytest.mark.parametrize("exc", CRASHES, ids=lambda e: type(e).__name__)
def test_everything_else_is_a_crash(exc: Exception) -> None:
    assert not unavailable(exc)
    assert not retryable(exc)
    # One crash among outages makes the whole failure a crash.
    assert not unavailable(ExceptionGroup("pipeline", [OUT_OF_REACH[0], exc]))


def test_a_deadlock_victim_is_retried_but_nothing_is_out_of_reach() -> None:
    for exc in (asyncpg.DeadlockDetectedError("deadlock"), asyncpg.SerializationError("x")):
        assert retryable(exc) and not unavailable(exc)


def test_a_frame_the_client_cannot_decode_is_told_apart() -> None:
    frame = amqp.InvalidFrameError("Could not unmarshal ContentHeader frame")
    assert undecodable(ExceptionGroup("pipeline", [frame]))
    assert not undecodable(ConnectionResetError())
    assert "InvalidFrameError" in describe(ExceptionGroup("pipeline", [frame]))
