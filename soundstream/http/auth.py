"""Bearer API keys for ``/v1``, held as SHA-256 digests.

The settings hold only digests (``config.key_digest``), so neither they nor this
middleware keep a key that a heap dump, a repr or a log line could give away. The
presented token is hashed and compared with every digest, without stopping at a
match, so how long the check takes says nothing about which key was close.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from soundstream.http import problems

CLIENT = "soundstream.client"
"""Scope key of the authenticated client: the first 12 hex digits of its key's
digest, enough to tell keys apart (in rate limits, in logs) and of no use for
finding the key."""


def client_id(digest: bytes) -> str:
    return digest.hex()[:12]


class BearerAuth:
    """Plain ASGI middleware: ``Authorization: Bearer <key>`` for one of the keys
    whose digests are given; records who it was in ``scope[CLIENT]``."""

    def __init__(self, app: ASGIApp, digests: Sequence[bytes]) -> None:
        if not digests:
            raise ValueError("BearerAuth needs at least one key digest")
        self.app = app
        self._digests = tuple(digests)
        self._ids = tuple(client_id(d) for d in self._digests)
        self._refusal = problems.problem(
            401,
            "send Authorization: Bearer <key> with a valid API key",
            headers={"WWW-Authenticate": 'Bearer realm="soundstream"'},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = self._client(scope)
        if client is None:
            await self._refusal(scope, receive, send)
            return
        scope[CLIENT] = client
        await self.app(scope, receive, send)

    def _client(self, scope: Scope) -> str | None:
        value = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = bytes(value).strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return None
        presented = hashlib.sha256(token.strip()).digest()
        found = None
        for digest, client in zip(self._digests, self._ids, strict=True):
            if hmac.compare_digest(presented, digest):
                found = client  # and keep comparing: no early exit
        return found
