"""The HTTP actor: uvicorn serving the starlette app inside our event loop.

uvicorn would install its own SIGINT/SIGTERM handlers; the supervisor owns signals,
so capture is switched off and the server is stopped through ``should_exit``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from soundstream.config import Settings

SHUTDOWN_TIMEOUT_S = 5
ABORT = "soundstream.abort"
"""``scope["extensions"][ABORT]["abort"]()`` drops the request's connection at once."""


class _Protocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), offering the app a way to drop its
    connection at once: uvicorn only closes it, which first waits for the buffered
    answer to go out, and a client that stopped reading never takes it (a live
    stream's stalled client, ``http.live``)."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {ABORT: {"abort": self.transport.abort}}


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()

    def port(self) -> int:
        for server in self.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        raise RuntimeError("the HTTP server has no socket")


async def run(
    settings: Settings,
    app: ASGIApp,
    stop: anyio.Event,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until ``stop`` is set; report the bound port (useful with port 0)."""
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        lifespan="off",
        log_config=None,
        access_log=False,
        # X-Forwarded-For is believed by the rate limit, from SOUNDSTREAM_TRUSTED_PROXIES
        # only; uvicorn's own handling would rewrite the client address for any
        # request from 127.0.0.1 (or $FORWARDED_ALLOW_IPS).
        proxy_headers=False,
        http=_Protocol,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_S,
    )
    server = _Server(config)

    async def serve() -> None:
        try:
            await server.serve()
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            raise OSError(f"cannot listen on {settings.http_host}:{settings.http_port}") from exc
        finally:
            server.listening.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        await server.listening.wait()
        if not server.started:
            return  # serve() is raising the bind error
        task_status.started(server.port())
        try:
            await stop.wait()
        finally:
            server.should_exit = True
            # Cancelled (not stopped): uvicorn's shutdown will not run, so at least
            # stop listening now. Closing twice is harmless.
            for listener in server.servers:
                listener.close()
