"""What runs in each spawned extraction process: its start-up, and its tasks.

A worker serves one socket to the main process: each request is a length-prefixed
pickle of ``(function, args)`` naming a function of this module, each reply a
length-prefixed pickle of ``(True, result)`` or ``(False, exception)``, in order.
The worker exits when the main process closes its end (or dies).

A task takes chunks' samples as they came (s16le stays 2 bytes a sample on the way),
converts them, and returns each chunk's ``chunk_frames`` row ready
for COPY, so what crosses back to the main process is bytes, not arrays, and the
main process never computes frame times or encodes a frame.

Ctrl-C in a terminal signals the whole process group, pool workers included. The
supervisor drains on SIGINT and still needs its workers for the chunks in flight,
so workers ignore it and leave shutdown to the supervisor.

``memory_mb`` caps what the worker may allocate beyond what it holds once started
(its data segment, ``RLIMIT_DATA``: heap and private mappings, not the code it
maps, set after the warm-up to the started size plus ``memory_mb``), so the limit
means the same whatever the libraries take at start-up: a chunk that needs
more fails in that worker (``MemoryError``, or the worker dies) instead of taking
the machine's memory; the extractor then returns that chunk to the queue, where
the broker's delivery limit ends its retries.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import socket
import struct
from collections.abc import Callable
from typing import Any

from soundstream.core.features import extract_many, warm_up
from soundstream.core.fields import FeatureParams
from soundstream.core.records import Encoded, Job
from soundstream.store.pgcopy import chunk_row

# A request's or reply's length, before its pickle.
FRAME = struct.Struct("!Q")
# How much nicer than the main process a worker runs (see ``init``).
NICE = 10
Request = tuple[Callable[..., Any], tuple[Any, ...]]


def serve(sock: socket.socket, params: FeatureParams, memory_mb: int = 0) -> None:
    """The worker's life: start up, then answer requests until the socket closes."""
    init(params, memory_mb)
    with sock:
        while (request := receive(sock)) is not None:
            try:
                if isinstance(request, BaseException):
                    raise request
                function, args = request
                reply = pickle.dumps((True, function(*args)), pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                reply = _failure(exc)
            sock.sendall(FRAME.pack(len(reply)))
            sock.sendall(reply)


def receive(sock: socket.socket) -> Request | MemoryError | None:
    """The next request; None once the main process has closed the socket. A request
    too large for this worker's memory is read past and returned as its error."""
    header = _read(sock, FRAME.size)
    if header is None:
        return None
    (size,) = FRAME.unpack(header)
    try:
        body = _read(sock, size)
        if body is None:
            return None
        request: Request = pickle.loads(body)
    except MemoryError as exc:
        return exc
    return request


def _read(sock: socket.socket, size: int) -> bytearray | None:
    """Exactly ``size`` bytes, or None at end of stream. On ``MemoryError`` the bytes
    are still consumed, so the next request starts where it should."""
    try:
        buffer = bytearray(size)
    except MemoryError:
        _skip(sock, size)
        raise
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buffer


def _skip(sock: socket.socket, size: int) -> None:
    scratch = bytearray(1 << 16)
    while size > 0:
        n = sock.recv_into(scratch, min(size, len(scratch)))
        if n == 0:
            return
        size -= n


def _failure(exc: Exception) -> bytes:
    """The pickled error reply; an error that cannot be pickled goes as its text."""
    try:
        return pickle.dumps((False, exc), pickle.HIGHEST_PROTOCOL)
    except Exception:
        return pickle.dumps((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


def init(params: FeatureParams, memory_mb: int = 0) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The main process gets a core first when it has work: while it waits for one,
    # the broker, the database and the other workers wait for it. Measured on
    # 2 cores: 1.74 to 1.83 cores busy and about 8% more chunks a second.
    os.nice(NICE)
    warm_up(params)
    if memory_mb:
        limit = data_segment_bytes() + memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def started() -> int:
    """A task that only shows the worker runs (its initializer has finished)."""
    return os.getpid()


def data_segment_bytes() -> int:
    """This process's data segment now (``VmData`` of /proc/self/status)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmData line")


def encode_many(params: FeatureParams, jobs: list[Job]) -> list[Encoded]:
    """Each job's features, encoded as its row."""
    features = extract_many(params, [(job.chunk.samples, job.chunk.sample_rate) for job in jobs])
    return [chunk_row(job, params.hop, f) for job, f in zip(jobs, features, strict=True)]
