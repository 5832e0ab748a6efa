"""Audio decoding: soundfile (libsndfile) first, PyAV (FFmpeg) for what it cannot read."""

from __future__ import annotations

import concurrent.futures
import logging
import os
from collections.abc import Sequence

import numpy as np

from pipeline.errors import (AudioContentError, AudioDecodeError, AudioMissingError,
                             AudioTruncatedError, AudioUriError)
from pipeline.storage import fs as fsio

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".mp4",
                    ".aif", ".aiff")
_OGG_EXTENSIONS = (".ogg", ".oga", ".opus")
_BLOCK_SECONDS = 30.0  # downmix in blocks so a long multichannel file is never held whole
_CHECKS = 16  # existence checks in flight at once against an object store (each one request)

# Told the length in seconds of the window being decoded, once the decoder knows it (the
# sandbox scales a song's time limit with it); None: nobody listens.
window_hook = None


def load_audio(uri: str, *, sample_rate: int, offset_seconds: float = 0.0,
               max_seconds: float | None = None) -> np.ndarray:
    """Decode, downmix and resample one file.

    Parameters
    ----------
    uri : str
        Local path or fsspec URI.
    sample_rate : int
        Target rate in Hz.
    offset_seconds, max_seconds : float
        Window of the file to decode, in seconds.

    Returns
    -------
    np.ndarray [shape=(n,), dtype=float32]
        Mono audio at ``sample_rate``: the mean of the channels, resampled by soxr (HQ, as
        ``librosa.load``).

    Raises
    ------
    AudioUriError, AudioMissingError, AudioDecodeError, AudioContentError
    """
    problem = fsio.scheme_problem(uri)
    if problem:
        raise AudioUriError(problem)
    fs, path = fsio.url_to_fs(uri)
    shown = fsio.redact(uri)  # what messages say: no query string (presigned signatures)
    try:
        return _decode(fs, path, shown, offset_seconds, max_seconds, sample_rate)
    except (AudioDecodeError, AudioContentError, AudioTruncatedError) as e:
        if shown == uri:
            raise
        # the decoders' own messages name the path they were given
        raise type(e)(str(e).replace(str(uri), shown).replace(path, shown)) from None


def missing_files(uris: Sequence[str], tried: Sequence[int]) -> list[AudioMissingError | None]:
    """Per song, the ``missing`` error of a file known not to be there, found before any
    decoder or sandbox is involved; None where it may be there (the decoder decides).

    A local file costs one stat (~1 us; a missing song through the sandbox ~95 us, measured),
    and a folder that is not there one stat for all its songs of the batch. In an object
    store only the songs tried before (``tried`` > 0: they failed for a reason that may pass,
    most often a file that never came) are checked, ``_CHECKS`` at a time; a new song's file
    is checked by the decoder as it opens it, so it costs no extra request.
    A check that fails (permissions, network) says nothing: the decoder meets the same error
    and reports it with its kind.
    """
    found: list[AudioMissingError | None] = [None] * len(uris)
    remote = []
    local_allowed = "file" in fsio.allowed_schemes()  # once: ~3 us a song read per URI
    folders: dict[str, bool] = {}  # folder -> known not to be there
    for i, (uri, tries) in enumerate(zip(uris, tried)):
        if fsio.is_local(uri):
            if not local_allowed:
                continue  # the decoder reports the scheme
            path = uri[len("file://"):] if uri.startswith("file://") else uri
            folder = os.path.dirname(path) or "."
            if folder not in folders:
                folders[folder] = _not_there(folder)
            if folders[folder] or _not_there(path):
                found[i] = AudioMissingError(f"no such file: {fsio.redact(uri)}")
        elif tries > 0 and not fsio.scheme_problem(uri):
            remote.append(i)
    if remote:
        with concurrent.futures.ThreadPoolExecutor(min(_CHECKS, len(remote))) as pool:
            for i, there in zip(remote, pool.map(_there, (uris[i] for i in remote))):
                if there is False:
                    found[i] = AudioMissingError(f"no such file: {fsio.redact(uris[i])}")
    return found


def _not_there(path: str) -> bool:
    """Whether a local path is known not to exist (a failed stat for another reason: no)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


def _there(uri: str) -> bool | None:
    """Whether an object-store file exists; None when the store did not say."""
    try:
        fs, path = fsio.url_to_fs(uri)
        return bool(fs.exists(path))
    except Exception:  # noqa: BLE001 - the decoder meets it again and reports its kind
        return None


def _decode(fs, path: str, uri: str, offset_seconds: float, max_seconds: float | None,
            rate: int) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``rate``; ``uri`` names it in messages."""
    # OSError (permissions, network) is left to propagate: it is transient (kind io).
    if fs.isdir(path):
        raise AudioDecodeError(f"{uri} is a folder, not an audio file")
    if not fs.exists(path):
        raise AudioMissingError(f"no such file: {uri}")
    if path.lower().endswith(_OGG_EXTENSIONS):
        _check_ogg_complete(fs, path, uri)
    try:
        y = _read_soundfile(fs, path, uri, offset_seconds, max_seconds, rate)
    except AudioDecodeError as sf_error:
        y = _read_pyav(fs, path, uri, offset_seconds, max_seconds, rate, sf_error)
    if y is None:  # Opus: FFmpeg decodes it 2-3x faster than libsndfile (measured)
        y = _read_pyav(fs, path, uri, offset_seconds, max_seconds, rate, None)
    if y.size == 0:
        raise AudioContentError(f"{uri} has no audio samples in the requested window")
    if not np.isfinite(y).all():
        raise AudioContentError(f"{uri} contains non-finite samples (NaN or inf)")
    return y


def _check_ogg_complete(fs, path: str, uri: str) -> None:
    """Refuse an Ogg file whose last page lacks the end-of-stream flag.

    Decoders play a truncated Ogg file up to the cut without complaint, which would label a
    fragment as the song; the flag (bit 2 of the page's header_type) is the cheap tell.
    """
    size = fs.size(path)
    with fs.open(path, "rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read()
    at = tail.rfind(b"OggS")
    if at < 0 or at + 5 >= len(tail):
        return  # not an Ogg container after all: let the decoders say what it is
    if not tail[at + 5] & 0x04:
        raise AudioTruncatedError(f"{uri} is truncated: its last Ogg page has no end-of-stream "
                                  f"flag ({size} bytes)")


def _read_soundfile(fs, path, uri, offset_seconds, max_seconds, rate):
    """The window decoded by libsndfile; None for an Opus stream (FFmpeg's is faster)."""
    import soundfile as sf

    guard = None if fsio.protocol_of(uri) in ("", "file") else _Guarded(fs, path, uri)
    try:
        with sf.SoundFile(path if guard is None else guard) as f:
            if f.subtype == "OPUS":
                return None
            sr = f.samplerate
            start = int(round(offset_seconds * sr))
            total = f.frames - start if f.frames > 0 else 0
            if max_seconds is not None:
                total = min(total, int(round(max_seconds * sr)))
            if total <= 0:
                return np.zeros(0, np.float32)
            _announce(total / sr)
            if start:
                f.seek(start)
            mono = _Mono(sr, rate, total)
            block, done = max(1, int(_BLOCK_SECONDS * sr)), 0
            while done < total:
                chunk = f.read(min(block, total - done), dtype="float32", always_2d=True)
                if chunk.shape[0] == 0:
                    break
                mono.add(_downmix(chunk.T))
                done += chunk.shape[0]
        if guard is not None:
            guard.check()  # a read that failed looked like the end of the file to libsndfile
        return mono.result()
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as e:
        if guard is not None:
            guard.check()
        raise AudioDecodeError(f"soundfile cannot decode {uri}: {e}") from e
    finally:
        if guard is not None:
            guard.close()


def _read_pyav(fs, path, uri, offset_seconds, max_seconds, rate, sf_error):
    """The window decoded by FFmpeg: Opus, and what libsndfile lacks (AAC/m4a, some mp3).

    An Opus stream seeks to 1 s before the window (more than its 80 ms pre-roll), places the
    first frame it decodes by its timestamp and counts samples from there (Opus timestamps
    are exact: tested against a decode from the start); other codecs decode from the start
    and count samples (a Vorbis frame's timestamp can be 448 samples off after a seek)."""
    import av

    guard = None if fsio.protocol_of(uri) in ("", "file") else _Guarded(fs, path, uri)
    try:
        with av.open(path if guard is None else guard, "r") as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{uri} has no audio stream")
            stream = container.streams.audio[0]
            sr = stream.codec_context.sample_rate
            if not sr:
                raise AudioDecodeError(f"{uri}: audio stream without a sample rate")
            start = int(round(offset_seconds * sr))
            limit = None if max_seconds is None else int(round(max_seconds * sr))
            length = max_seconds or 0.0
            if container.duration:  # microseconds
                length = max(0.0, container.duration / 1e6 - offset_seconds)
                length = length if max_seconds is None else min(length, max_seconds)
                _announce(length)
            mono = _Mono(sr, rate, int(length * sr))
            block_size = int(_BLOCK_SECONDS * sr)
            first = stream.start_time or 0  # Opus: the pre-skip, in stream time_base units
            timed = stream.codec_context.name == "opus" and start > sr
            if timed:
                container.seek(first + int((offset_seconds - 1.0) / stream.time_base),
                               stream=stream)
            window = _Window(mono, start, limit, position=None if timed else 0)
            _decode_into(window, container, stream, uri, first=first, block_size=block_size)
    except (av.FFmpegError, ValueError) as e:
        if guard is not None:
            guard.check()
        before = f"{sf_error}; " if sf_error is not None else ""
        raise AudioDecodeError(f"not a readable audio file: {uri} ({before}FFmpeg: {e})") from e
    finally:
        if guard is not None:
            guard.close()
    # an OSError that is not FFmpeg's (storage, network) propagates: transient, not decode
    if guard is not None:
        guard.check()
    return mono.result()


def _decode_into(window: "_Window", container, stream, uri: str, *, first: int,
                 block_size: int) -> None:
    """Decode ``stream`` of an open PyAV ``container`` into ``window`` until it is full.

    Planar float in the file's own layout, converted only when the decoder gives another
    format; frames are joined, downmixed and cut in blocks of ``block_size`` samples (an Opus
    frame is 20 ms: per-frame numpy calls cost more than decoding it). A window without a
    ``position`` (after a seek) is placed by its first frame's timestamp, ``first`` being the
    stream's start time."""
    import av

    sr = stream.codec_context.sample_rate
    planar = av.AudioResampler(format="fltp", rate=sr)
    for frame in container.decode(stream):
        if window.position is None:  # the first frame after the seek places them all
            if frame.pts is None:
                raise AudioDecodeError(f"{uri}: an Opus frame without a timestamp")
            window.position = int(round(float((frame.pts - first) * stream.time_base) * sr))
        for out in [frame] if frame.format.name == "fltp" else planar.resample(frame):
            window.hold(out.to_ndarray())
        if window.held >= block_size or window.full():
            window.flush()
            if window.done():
                break
    window.flush()


class _Window:
    """Planar blocks of decoded audio in, the window [start, start + limit) of their mean
    over channels out to ``mono``; ``position``: the file sample the next block starts at."""

    def __init__(self, mono: "_Mono", start: int, limit: int | None, position: int | None):
        self.mono, self.start, self.limit, self.position = mono, start, limit, position
        self.pending: list[np.ndarray] = []
        self.held = self.kept = 0

    def hold(self, planes: np.ndarray) -> None:
        self.pending.append(planes)
        self.held += planes.shape[1]

    def full(self) -> bool:
        """Whether what is held reaches the window's end."""
        return self.limit is not None and self.position + self.held >= self.start + self.limit

    def done(self) -> bool:
        return self.limit is not None and self.kept >= self.limit

    def flush(self) -> None:
        if not self.pending:
            return
        planes = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending, 1)
        self.pending, self.held = [], 0
        block = _downmix(planes[:, max(0, self.start - self.position):])
        self.position += planes.shape[1]
        if self.limit is not None:
            block = block[: self.limit - self.kept]
        if block.size:
            self.mono.add(block)
            self.kept += block.size


def _downmix(planar: np.ndarray) -> np.ndarray:
    """[channels, n] -> [n] float32, the mean of the channels (a sum of rows: numpy's mean
    over a short axis of an interleaved block costs 25x more, measured)."""
    planar = planar.astype(np.float32, copy=False)
    if planar.shape[0] == 1:
        return planar[0]
    mono = planar[0] + planar[1]
    for channel in planar[2:]:
        mono += channel
    mono *= np.float32(1.0 / planar.shape[0])
    return mono


class _Mono:
    """Mono blocks at ``native_sr`` in, one float32 array at ``rate`` out, resampled block by
    block (soxr's stream gives the same samples as one call on the whole signal): a long
    file is never held at its native rate, and the output is written in place, not joined."""

    def __init__(self, native_sr: int, rate: int, expected: int):
        import soxr

        self.rate = rate
        self.stream = None if rate == native_sr else soxr.ResampleStream(
            native_sr, rate, 1, dtype="float32", quality="HQ")
        self.out = np.empty(max(16, int(np.ceil(expected * rate / native_sr)) + 16), np.float32)
        self.n = 0

    def add(self, block: np.ndarray, last: bool = False) -> None:
        block = block.astype(np.float32, copy=False)
        if self.stream is not None:
            block = self.stream.resample_chunk(block, last=last)
        if self.n + block.size > self.out.size:  # a longer stream than its header said
            self.out = np.concatenate([self.out[:self.n],
                                       np.empty(max(block.size, self.n), np.float32)])
        self.out[self.n:self.n + block.size] = block
        self.n += block.size

    def result(self) -> np.ndarray:
        if self.stream is not None:
            self.add(np.zeros(0, np.float32), last=True)
            self.stream = None
        # a header that promised more than came: do not keep the unused buffer alive
        return self.out[:self.n] if self.n >= 0.9 * self.out.size else self.out[:self.n].copy()


def _announce(seconds: float) -> None:
    if window_hook is not None:
        window_hook(seconds)


class _Guarded:
    """A remote file for decoders that read through callbacks. libsndfile's callbacks cannot
    raise: an exception in ``read`` becomes 0 bytes, which reads as the end of the file and
    would make a dropped connection a silently shortened song. This keeps the first error
    and ``check`` raises it after the decoder returns."""

    mode = "rb"

    def __init__(self, fs, path: str, uri: str):
        from pipeline import faults

        self.f = faults.reader(uri, fs.open(path, "rb"))
        self.error: BaseException | None = None

    def _guard(self, method, *args, default):
        if self.error is not None:
            return default
        try:
            return method(*args)
        except Exception as e:  # noqa: BLE001  (kept, raised by check)
            self.error = e
            return default

    def read(self, n: int = -1) -> bytes:
        return self._guard(self.f.read, n, default=b"")

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._guard(self.f.seek, offset, whence, default=-1)

    def tell(self) -> int:
        return self._guard(self.f.tell, default=-1)

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def check(self) -> None:
        """Raise the first error a read hit, as an OSError (kind ``io``: tried again)."""
        if self.error is not None:
            error, self.error = self.error, None
            if isinstance(error, OSError):
                raise error
            raise OSError(f"reading failed: {type(error).__name__}: {error}") from error

    def close(self) -> None:
        self.f.close()
