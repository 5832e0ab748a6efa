"""Faults injected on purpose, for the fault-injection tests (never set in production).

``GENRES_FAULTS="kind:marker[*n],..."`` makes every song whose file name contains ``marker`` fail
inside the process that decodes it (the marker is looked for in the file's name) (:mod:`pipeline.sandbox`):

- ``abort`` — the process aborts (SIGABRT), as a decoder's segfault would end it;
- ``hang`` — the decoder never returns;
- ``hog`` — the decoder takes memory until it is stopped;
- ``oserror`` — reading fails with a connection reset, on the first ``n`` tries in a process
  (every try without ``*n``);
- ``cutread`` — the connection drops halfway through the file (a remote file's reads fail).
"""

from __future__ import annotations

import os
import time

ENV = "GENRES_FAULTS"

_tries: dict[str, int] = {}


def _faults(uri: str) -> list[tuple[str, int | None]]:
    """(kind, n or None) of each fault whose marker is in ``uri``."""
    out = []
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        kind, _, marker = item.partition(":")
        marker, _, n = marker.partition("*")
        if marker and marker in name:
            out.append((kind.strip(), int(n) if n else None))
    return out


def inject(uri: str) -> None:
    """Fail as ``GENRES_FAULTS`` says for this song (no-op when it is unset)."""
    for kind, n in _faults(uri):
        if kind == "abort":
            os.abort()
        elif kind == "hang":
            while True:
                time.sleep(60)
        elif kind == "hog":
            hoard = []
            while True:
                hoard.append(bytearray(64 * 1024**2))  # bytearray zero-fills: pages touched
        elif kind == "oserror":
            _tries[uri] = _tries.get(uri, 0) + 1
            if n is None or _tries[uri] <= n:
                raise ConnectionResetError(f"injected: connection reset reading {uri}")


def reader(uri: str, f):
    """``f``, or for a ``cutread`` song a file whose reads fail past half its size."""
    if not any(kind == "cutread" for kind, _ in _faults(uri)):
        return f
    return _CutRead(f, f.size // 2)


class _CutRead:
    def __init__(self, f, limit: int):
        self.f, self.limit = f, limit

    def __getattr__(self, name):
        return getattr(self.f, name)

    def read(self, n: int = -1) -> bytes:
        if self.f.tell() + (n if n >= 0 else self.f.size) > self.limit:
            raise ConnectionResetError("injected: connection reset mid-read")
        return self.f.read(n)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
