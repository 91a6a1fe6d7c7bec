"""What a failure means, decided in one place for the writer, the supervisor and the API.

``unavailable`` answers "is a dependency out of reach right now?": the network,
the broker or PostgreSQL went away or refuses connections for now. Such failures
are waited out (no restart budget spent, 503 on the API). Everything else is a
crash with a reason: bad credentials, a frame the AMQP client cannot decode, a
channel the broker closed for a protocol error, a value PostgreSQL or asyncpg
rejects, a missing schema, a bug. Waiting would not make those go away.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
from aiormq import exceptions as amqp

# The broker or server said no in a way that is not about reachability.
_PROTOCOL = (
    amqp.AuthenticationError,
    amqp.ProbableAuthenticationError,
    amqp.IncompatibleProtocolError,
    amqp.ProtocolSyntaxError,  # includes InvalidFrameError: a frame we cannot decode
    amqp.ConnectionSyntaxError,
    amqp.ConnectionFrameError,
    amqp.ConnectionCommandInvalid,
    amqp.ConnectionChannelError,
    amqp.ConnectionUnexpectedFrame,
    amqp.ConnectionNotAllowed,
    amqp.ConnectionNotImplemented,
)
_DATABASE_AWAY = (
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError
    # Starting up or shutting down, pg_terminate_backend, a statement timeout.
    asyncpg.OperatorInterventionError,
    # Too many connections, disk full, out of memory: an operator or time fixes it.
    asyncpg.InsufficientResourcesError,
)
# asyncpg reports an operation on a connection that went away as a plain
# InterfaceError (the class it also uses for misuse), told apart by its words.
_CLOSED_CONNECTION = ("connection is closed", "connection was closed")
# Worth running the same transaction again, though nothing is out of reach.
_TRANSIENT_CONFLICT = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The failures inside an exception group (or the exception itself)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def unavailable(exc: BaseException) -> bool:
    """Every failure in ``exc`` means a dependency cannot be reached right now."""
    return all(_out_of_reach(e) for e in leaves(exc))


def retryable(exc: BaseException) -> bool:
    """The same database transaction may succeed if simply run again."""
    return unavailable(exc) or all(isinstance(e, _TRANSIENT_CONFLICT) for e in leaves(exc))


def undecodable(exc: BaseException) -> bool:
    """The AMQP client could not decode a frame the broker sent: some message's
    properties are beyond what the client library can represent."""
    return any(isinstance(e, amqp.ProtocolSyntaxError) for e in leaves(exc))


def database_failure(exc: BaseException) -> bool:
    """Some failure in ``exc`` came from the database client."""
    return any(isinstance(e, asyncpg.PostgresError | asyncpg.InterfaceError) for e in leaves(exc))


def describe(exc: BaseException) -> str:
    return "; ".join(f"{type(e).__name__}: {e}" for e in leaves(exc))


def _out_of_reach(exc: BaseException) -> bool:
    if isinstance(exc, _PROTOCOL):
        return False
    if isinstance(exc, _DATABASE_AWAY):
        return True
    if isinstance(exc, asyncpg.InterfaceError) and any(
        words in str(exc) for words in _CLOSED_CONNECTION
    ):
        return True
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        # SQLSTATE errors and client-side errors such as DataError: deterministic.
        return False
    # Sockets, timeouts, DNS, a connection reset or closed by the broker (it
    # restarts, or forced it closed): aiormq's connection errors are OSErrors.
    return isinstance(exc, OSError)
