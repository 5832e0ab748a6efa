"""Songs decoded in a child process of the worker, one at a time, under limits.

Decoders are native code: a file can crash one (a segfault, an abort), hang it, or make it
take all the memory. Run in the worker itself, such a song takes its whole batch down with it
on every retry. Here the worker (a Ray task or actor) keeps one child process and sends it
one song at a time; the child decodes and featurises it and sends the arrays back. A song
that kills the child, runs past its time limit or takes more than its memory limit is tried
again in a fresh child, a bounded number of times, and then becomes an error of its own kind
(``crash``, ``timeout``, ``oom``) while the rest of the batch goes on. A storage error
(``OSError``) is retried with a back-off and then becomes ``io``, which the next run retries.

No Ray here: the same code runs under a Ray task, an actor or a plain loop (tests).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from multiprocessing.connection import Connection

from pipeline.errors import (AudioError, AudioIOError, SongCrashError, SongInternalError,
                             SongMemoryError, SongTimeoutError)
from pipeline.storage.fs import scrub

log = logging.getLogger(__name__)

LIMITS_ENV = "GENRES_SONG_LIMITS"  # e.g. "base_s=60,per_audio_s=0.5,memory_mb=4096"


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one song may cost. Its time limit is ``base_s`` plus ``per_audio_s`` per second of
    audio in its window, from the moment the decoder knows that length (decoding runs at
    30-400x realtime per core, so the default leaves a 2-hour file an hour)."""

    base_s: float = 60.0
    per_audio_s: float = 0.5
    memory_mb: int = 4096  # the child's resident memory (a 2-hour 48 kHz file: see docs/operations.md)
    attempts: int = 2  # tries of a song that crashed, hung or ran out of memory
    io_attempts: int = 3  # tries of a song whose reads failed
    backoff_s: float = 1.0  # before the second io try; doubles after

    @classmethod
    def from_env(cls) -> "Limits":
        """Defaults, overridden by ``GENRES_SONG_LIMITS`` (``name=value,...``)."""
        values = {}
        for item in filter(None, os.environ.get(LIMITS_ENV, "").split(",")):
            name, _, value = item.partition("=")
            field = {f.name: f for f in dataclasses.fields(cls)}.get(name.strip())
            if field is None:
                from pipeline.errors import ParameterError

                raise ParameterError(f"{LIMITS_ENV}: no limit named {name.strip()!r}; "
                                     f"use {', '.join(f.name for f in dataclasses.fields(cls))}")
            values[field.name] = (float if field.type in ("float", float) else int)(value)
        return cls(**values)


class _Failed(Exception):
    """One try of a song failed in a way another try may not: ``error`` if it is the last."""

    def __init__(self, error: AudioError):
        super().__init__(str(error))
        self.error = error


class Sandbox:
    """A child process that runs ``fn(*args)`` for one song at a time (see module doc)."""

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits.from_env()
        self.process: subprocess.Popen | None = None

    def call(self, fn, *args, name: str = "the song"):
        """``fn(*args)`` run in the child (``fn`` importable, arguments picklable); its result.

        Raises the ``AudioError`` that ``fn`` raised, or after the bounded retries
        ``SongCrashError``, ``SongTimeoutError``, ``SongMemoryError`` or ``AudioIOError``;
        ``SongInternalError`` for any other exception. ``name`` names the song in messages.
        """
        tries = {"crash": 0, "timeout": 0, "oom": 0, "io": 0}
        while True:
            try:
                return self._once(fn, args, name)
            except _Failed as failed:
                kind = failed.error.kind
                tries[kind] += 1
                most = self.limits.io_attempts if kind == "io" else self.limits.attempts
                if tries[kind] >= most:
                    raise failed.error from None
                log.warning("%s (try %d of %d)", failed.error, tries[kind], most)
                if kind == "io":
                    time.sleep(self.limits.backoff_s * 2 ** (tries[kind] - 1))

    def _once(self, fn, args, name: str):
        if self.process is None or self.process.poll() is not None:
            self._start(fn.__module__)
        try:
            self._send.send((fn, args))
        except OSError:  # the child died after the last song
            raise _Failed(self._died(name)) from None
        limits = self.limits
        deadline = time.monotonic() + limits.base_s
        while True:
            if self._receive.poll(0.2):
                try:
                    what, value = self._receive.recv()
                except (EOFError, OSError):
                    raise _Failed(self._died(name)) from None
                if what == "window":  # the decoder knows the length: scale the time limit
                    deadline = time.monotonic() + limits.base_s + limits.per_audio_s * value
                    continue
                if what == "ok":
                    return value
                if what == "audio":
                    raise value
                if what == "io":
                    raise _Failed(AudioIOError(f"reading {name} failed: {value}"))
                if what == "memory":
                    self.stop()
                    raise _Failed(SongMemoryError(f"{name} ran out of memory while decoding"))
                raise SongInternalError(f"{name}: unexpected error while decoding: {value}")
            if self.process.poll() is not None:
                raise _Failed(self._died(name))
            if _resident_mb(self.process.pid) > limits.memory_mb:
                self.stop()
                raise _Failed(SongMemoryError(
                    f"{name} took over {limits.memory_mb} MB while decoding (limit per song)"))
            if time.monotonic() > deadline:
                self.stop()
                raise _Failed(SongTimeoutError(
                    f"{name} was still decoding after its time limit ({limits.base_s:.0f} s + "
                    f"{limits.per_audio_s} s per second of audio)"))

    def _died(self, name: str) -> AudioError:
        """The error for a child that ended while decoding ``name``."""
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:  # its channel broke but it lives: end it
            self.process.kill()
            code = self.process.wait()
        self.stop()
        if code == -signal.SIGKILL:  # not by us: the kernel's OOM killer
            return SongMemoryError(f"{name} was killed while decoding (out of memory)")
        how = signal.Signals(-code).name if code < 0 else f"exit status {code}"
        return SongCrashError(f"{name} crashed the decoder ({how})")

    def _start(self, preload: str) -> None:
        """A fresh child, importing module ``preload`` (the first function's) before it reads
        a song."""
        self.stop()
        # the child imports what this process imports (a Ray job's working dir included)
        path = os.pathsep.join(p for p in sys.path if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.sandbox", preload], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, close_fds=True, env={**os.environ, "PYTHONPATH": path})
        # the Connections own duplicates of the pipe ends
        self._send = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self._receive = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()
        self.process.stdout.close()

    def stop(self) -> None:
        """End the child (a later call starts a fresh one)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._send.close()
        self._receive.close()
        self.process = None


_SANDBOX: Sandbox | None = None


def sandbox() -> Sandbox:
    """This process's sandbox (one child per Ray worker, kept across its tasks)."""
    global _SANDBOX
    if _SANDBOX is None:
        _SANDBOX = Sandbox()
    return _SANDBOX


def _resident_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (0 where /proc is not there)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**2
    except (OSError, ValueError, IndexError):
        return 0.0


def _serve(preload: str) -> None:
    """The child: songs in on stdin, results out on stdout, until stdin closes; module
    ``preload`` (numpy, pyarrow, the decoders, ...) is imported before the first song."""
    receive = Connection(os.dup(0), writable=False)
    send = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # what libraries print goes to the worker's log, not into the channel
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    _die_with_parent()
    from pipeline import faults
    from pipeline.storage import audio

    audio.window_hook = lambda seconds: send.send(("window", float(seconds)))
    import importlib

    importlib.import_module(preload)

    while True:
        try:
            fn, args = receive.recv()
        except EOFError:
            return
        try:
            if os.environ.get(faults.ENV) and args:
                faults.inject(getattr(args[0], "uri", ""))
            reply = ("ok", fn(*args))
        except AudioError as e:
            reply = ("audio", e)
        except MemoryError:
            reply = ("memory", "")
        except OSError as e:  # storage: transient, retried
            reply = ("io", scrub(f"{type(e).__name__}: {e}"))
        except Exception as e:  # noqa: BLE001  (a bug: the song says so, the run goes on)
            traceback.print_exc()
            reply = ("bug", scrub(f"{type(e).__name__}: {e}"))
        send.send(reply)


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent (the worker) dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl
        os._exit(0)


if __name__ == "__main__":
    _serve(sys.argv[1])
