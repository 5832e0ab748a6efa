"""The serial unit of extraction: a batch of songs in, one committed feature shard out.

Runs without Ray (unit tests, debugging); ``pipeline.runtime.extract`` maps it over Ray tasks.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
import pyarrow as pa

from pipeline.errors import AudioError
from pipeline.features import FeatureSpec, frame_audio, frame_features
from pipeline.features.musicnn import PATCH_SECONDS, musicnn_patches
from pipeline.features.spec import EmbeddingSpec
from pipeline.retry import RetryPolicy
from pipeline.sandbox import sandbox
from pipeline.storage.audio import load_audio, missing_files
from pipeline.storage import fs as fsio
from pipeline.storage.catalog import Song
from pipeline.storage.shards import ERROR_SCHEMA, FeatureStore, frame_schema, tensor_array

log = logging.getLogger(__name__)


# Frames per STFT call: two 5 s frames' windows and spectra (~7 MB) stay in the CPU's caches
# (GTZAN-3, CPU time per song: 24-25 ms in chunks of 2, 28 ms in chunks of 16; measured).
_FRAMES_PER_CHUNK = 2


def song_features(song: Song, spec: FeatureSpec | EmbeddingSpec) -> dict:
    """Decode one song and compute its rows' tensors (raises AudioError subclasses).

    Frame specs: see :func:`frame_song`; embedding specs: :func:`embed_song`.
    """
    if isinstance(spec, EmbeddingSpec):
        return embed_song(song, spec)
    return frame_song(song, spec)


def model_input(song: Song, spec: FeatureSpec | EmbeddingSpec, feature: str) -> np.ndarray:
    """What a bundle's model takes for one song: musicnn's patches [n, 187, 96] for an
    embedding spec, else the ``feature`` column of its frames [n_frames, bands, t]."""
    if isinstance(spec, EmbeddingSpec):
        return musicnn_input(song, spec)["patches"]
    return frame_song(song, spec)[feature]


def musicnn_input(song: Song, spec: EmbeddingSpec) -> dict:
    """Decode one song into musicnn patches: ``patches`` [n, 187, 96], ``start_s``, ..."""
    y = load_audio(song.uri, sample_rate=spec.sample_rate, offset_seconds=spec.offset_seconds,
                   max_seconds=spec.max_seconds)
    patches, padded = musicnn_patches(y)
    return {"patches": patches, "padded": padded, "audio_seconds": y.shape[0] / spec.sample_rate,
            "start_s": np.arange(patches.shape[0]) * PATCH_SECONDS + spec.offset_seconds}


@functools.lru_cache(maxsize=2)
def pretrained_musicnn(name: str):
    """musicnn ``name`` with its published weights, built once per process."""
    from pipeline.models.musicnn import build_musicnn, load_weights
    from pipeline.storage.weights import read_checkpoint, read_tags

    model = build_musicnn(len(read_tags(name)))
    load_weights(model, read_checkpoint(name))
    return model


def embed_song(song: Song, spec: EmbeddingSpec) -> dict:
    """musicnn ``embedding`` [n, 200] and ``taggram`` [n, 50] (and ``pools`` [n, 1506]) of
    each 3 s patch of a song."""
    feats = musicnn_input(song, spec)
    out = pretrained_musicnn(spec.model).predict(feats.pop("patches"), batch_size=32, verbose=0)
    return {**feats, **{name: musicnn_column(out, name).astype(spec.dtype)
                        for name in spec.columns()}}


def gone_message(error: AudioError, attempt: int, retry: RetryPolicy) -> str:
    """The message of a failed try: the error's, and why no try follows when it is gone."""
    if retry.kind(error.kind, attempt) == error.kind:
        return str(error)
    return f"{error.kind} on {attempt} tries, the last allowed: {error}"


def musicnn_column(outputs: dict, name: str) -> np.ndarray:
    """Feature column ``name`` of an :class:`EmbeddingSpec` from musicnn's outputs [n, ...]:
    ``embedding`` is the penultimate layer, ``pools`` the mean_pool and max_pool layers."""
    if name == "pools":
        return np.concatenate([outputs["mean_pool"], outputs["max_pool"]], axis=1)
    return outputs["penultimate" if name == "embedding" else name]


def frame_song(song: Song, spec: FeatureSpec) -> dict:
    """Decode one song and compute its frame features (raises AudioError subclasses).

    Returns a dict with ``mfcc`` [n_frames, n_mfcc, t], ``logmel`` [n_frames, n_mels, t],
    ``start_s`` [n_frames] (seconds from the file start), ``padded`` and ``audio_seconds``.
    """
    # 44.1 kHz is resampled too: soxr's 2:1 plus one STFT costs 34 ms per minute of audio,
    # a 2x-long STFT at the native rate 50 ms (measured)
    y = load_audio(song.uri, sample_rate=spec.sample_rate, offset_seconds=spec.offset_seconds,
                   max_seconds=spec.max_seconds)
    frames, starts, padded = frame_audio(y, spec=spec)
    chunks = [frame_features(frames[i:i + _FRAMES_PER_CHUNK], spec=spec)
              for i in range(0, frames.shape[0], _FRAMES_PER_CHUNK)]
    mfcc = np.concatenate([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
    logmel = np.concatenate([c[1] for c in chunks]) if len(chunks) > 1 else chunks[0][1]
    return {"mfcc": mfcc, "logmel": logmel, "start_s": starts + spec.offset_seconds,
            "padded": padded, "audio_seconds": y.shape[0] / spec.sample_rate}


def extract_shard(songs: list[Song], spec: FeatureSpec | EmbeddingSpec, out: str, part: str,
                  *, run_id: str, retry: RetryPolicy = RetryPolicy()) -> dict:
    """Extract ``songs`` into part ``part`` of the feature directory ``out``, uncommitted.

    Each song is decoded in this process's sandbox (:mod:`pipeline.sandbox`): one that crashes,
    hangs or exhausts the decoder becomes an error row and the others go on. Every song ends
    in the part's frame rows or its error rows, with its try number (``Song.tries`` + 1); a
    transient error on the last try ``retry`` allows is recorded as ``gone``. Returns a
    summary: ``songs``,
    ``ok``, ``frames``, ``audio_seconds``, ``errors`` ({kind: count}), ``seconds``, and
    ``add``, the add row that commits the part (``FeatureStore.commit`` or a Committer).
    """
    started = time.perf_counter()
    columns = {name: [] for name in ("song_id", "frame", "start_s", "label", "artist", "split",
                                     "padded")}
    tensors = {name: [] for name in spec.columns()}
    errors = []
    audio_seconds = 0.0
    absent = missing_files([s.uri for s in songs], [s.tries for s in songs])
    for song, missing in zip(songs, absent):
        try:
            if missing:
                raise missing
            feats = sandbox().call(song_features, song, spec, name=fsio.redact(song.uri))
        except AudioError as e:
            # the error row holds the reason, and the summary counts it: a line per song
            # would cost each worker ~30 us and Ray's log stream to the driver a line each
            log.debug("song %s failed: %s", song.song_id, e)
            errors.append({"song_id": song.song_id, "uri": song.uri,
                           "error": retry.kind(e.kind, song.tries + 1),
                           "message": gone_message(e, song.tries + 1, retry)})
            continue
        n = feats["start_s"].shape[0]
        columns["song_id"] += [song.song_id] * n
        columns["frame"] += list(range(n))
        columns["start_s"] += feats["start_s"].tolist()
        columns["label"] += [song.label] * n
        columns["artist"] += [song.artist] * n
        columns["split"] += [song.split] * n
        columns["padded"] += [feats["padded"]] * n
        for name in tensors:
            tensors[name].append(feats[name])
        audio_seconds += feats["audio_seconds"]
    schema = frame_schema(spec)
    dtype = np.dtype(spec.dtype)
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema if f.name in columns]
    for name, shape in spec.columns().items():
        arrays.append(tensor_array(np.concatenate(tensors[name]) if tensors[name]
                                   else np.zeros((0, *shape), dtype)))
    frames = pa.Table.from_arrays(arrays, schema=schema)
    add = FeatureStore(out).write_part(part, frames,
                                       pa.Table.from_pylist(errors, schema=ERROR_SCHEMA),
                                       run_id=run_id, uris={s.song_id: s.uri for s in songs},
                                       attempts={s.song_id: s.tries + 1 for s in songs})
    kinds: dict[str, int] = {}
    for e in errors:
        kinds[e["error"]] = kinds.get(e["error"], 0) + 1
    return {"songs": len(songs), "ok": len(songs) - len(errors), "frames": frames.num_rows,
            "audio_seconds": audio_seconds, "errors": kinds, "add": add,
            "seconds": time.perf_counter() - started}
