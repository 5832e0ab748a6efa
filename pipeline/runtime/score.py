"""Scoring on Ray Data: catalog -> songs this model has not labelled (one shuffle with the
table's marks) -> decode + features (tasks) -> model (actor pool) -> label files written by
tasks -> commits.

The input is a catalog of audio (decoded and featurised with the bundle's spec) or a feature
directory written by ``genres extract`` (its spec must match the bundle's). Each row carries one
whole song (its frames as one tensor), so song aggregation needs no shuffle or groupby over the
catalog. The driver sees the add rows of the label files, never a label row, and commits them
to the labels' Delta table as they come (:mod:`pipeline.runtime.commit`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import math
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import (AudioError, BundleError, CatalogError, ParameterError,
                             SpecMismatchError)
from pipeline.extract import gone_message, model_input
from pipeline.features.musicnn import N_MELS as MUSICNN_MELS, PATCH_FRAMES
from pipeline.retry import RetryPolicy, utc_now
from pipeline.runtime.catalog import (catalog_dataset, column_or_nulls,
                                      latest_per_song, partitions, plan_retries, table_rows,
                                      todo_of, tried_again, without)
from pipeline.runtime.commit import aggregator_is, commit_stream, resolver
from pipeline.runtime.cluster import (ACTOR_RETRIES, RunOptions, actor_pool, connect,
                                      gpus_seen_here, map_bounded, plan_batches, plan_size,
                                      plan_window, wait_for, windows)
from pipeline.sandbox import sandbox
from pipeline.storage import fs as fsio
from pipeline.storage.audio import missing_files
from pipeline.storage.bundle import read_bundle, read_lite_model, verify_bundle
from pipeline.storage.catalog import CatalogSource, Song, describe_catalog
from pipeline.storage.delta import ADD_SCHEMA, Committer, latest_rows, new_run_id
from pipeline.storage.labels import FILE_SCHEMA, LabelTable, label_rows
from pipeline.storage.shards import INDEX_SCHEMA, SPEC_FILE, FeatureStore, tensor_values

log = logging.getLogger(__name__)

_FILE_SONGS = 2000  # songs per label file (each write task writes one)
# Files of error rows of songs whose files are not there hold this many times more: they are
# written at once, not as actors finish (1M such songs: 500 write tasks took 3.2 s of 2 CPUs)
_ERROR_FILE_FACTOR = 10
_BLOCK_SONGS = 32  # at most this many songs per Ray Data block (as in extract's tasks)
_TF_ACTOR_MEMORY = 1536 * 1024**2  # reserved per TensorFlow model actor (a mil actor: ~1 GB RSS)
_RETRIES = 3  # of a task or actor lost with its worker or node (a poison song costs only itself)


def decode_batch(batch: dict, *, spec, feature: str, retries: RetryPolicy) -> dict:
    """Ray Data map_batches fn: one row per song with the model input of all its frames.

    Frame bundles: the feature column [n_frames, bands, t]. Embedding bundles: musicnn's input
    patches [n_patches, 187, 96] (the network itself runs in the model actors). Songs are
    decoded in this process's sandbox: one that crashes or hangs the decoder is an error row,
    with its try number (``tries`` + 1; ``gone`` for a transient error on the last try
    ``retries`` allows).
    """
    out = {"song_id": [], "uri": [], "error": [], "message": [], "attempt": [], "x": []}
    shape = (PATCH_FRAMES, MUSICNN_MELS) if spec.kind == "musicnn" else spec.columns()[feature]
    tries = batch["tries"] if "tries" in batch else np.zeros(len(batch["song_id"]), np.int32)
    # the run checked every file before its windows (check_files): no second stat or request
    for song_id, uri, tried in zip(batch["song_id"], batch["uri"], tries):
        attempt = int(tried) + 1
        try:
            x, error, message = sandbox().call(model_input, Song(song_id, uri), spec, feature,
                                               name=fsio.redact(uri)), "", ""
        except AudioError as e:
            x = np.zeros((0, *shape), np.float32)
            error, message = retries.kind(e.kind, attempt), gone_message(e, attempt, retries)
        for key, value in (("song_id", song_id), ("uri", uri), ("error", error),
                           ("message", message), ("attempt", attempt),
                           ("x", x.astype(np.float32))):
            out[key].append(value)
    return _song_batch(out)


def _song_batch(columns: dict[str, list]) -> dict:
    """Lists per column -> a numpy batch; ``x`` holds one [n_frames, ...] array per song."""
    xs = np.empty(len(columns["x"]), dtype=object)
    xs[:] = columns["x"]
    return {**{k: np.array(v, dtype=np.int32 if k == "attempt" else object)
               for k, v in columns.items() if k != "x"}, "x": xs}


def read_feature_songs(batch: dict, *, root: str, column: str) -> dict:
    """Ray Data fn (numpy batches): index rows of songs (in part order) -> one row per song
    with all its frames; each part is read once per batch."""
    store = FeatureStore(root)
    out = {"song_id": [], "uri": [], "error": [], "message": [], "attempt": [], "x": []}
    parts = batch["part"].tolist()
    songs = batch["song_id"].tolist()
    for part in dict.fromkeys(parts):
        table = store.read_part(part, ["song_id", "frame", column])
        ids = table.column("song_id").to_numpy(zero_copy_only=False)
        values = tensor_values(table.column(column))
        frames = table.column("frame").to_numpy()
        for song_id in (s for s, p in zip(songs, parts) if p == part):
            rows = np.flatnonzero(ids == song_id)
            out["song_id"].append(song_id)
            out["uri"].append(store.part_uri(part))
            out["error"].append("")
            out["message"].append("")
            out["attempt"].append(1)
            out["x"].append(values[rows[np.argsort(frames[rows])]].astype(np.float32))
    return _song_batch(out)


def carried_errors(batch: pa.Table, *, n_classes: int) -> dict:
    """Ray Data fn: index rows of songs that failed extraction -> scorer rows of the same
    errors, so they land in the labels as errors (every song in exactly one place)."""
    n = batch.num_rows
    attempt = column_or_nulls(batch, "attempt", pa.int32()).fill_null(1).to_numpy()
    return {"song_id": _objects(batch, "song_id"), "uri": _objects(batch, "uri"),
            "error": _objects(batch, "error"), "message": _objects(batch, "message"),
            "attempt": attempt.astype(np.int32),
            "genre": np.array([""] * n, dtype=object), "confidence": np.zeros(n, np.float32),
            "n_frames": np.zeros(n, np.int32),
            "probabilities": np.zeros((n, n_classes), np.float32)}


def _objects(batch: pa.Table, column: str) -> np.ndarray:
    return np.array(["" if v is None else v for v in batch.column(column).to_pylist()],
                    dtype=object)


def runs_lite(bundle, use_gpu: bool) -> bool:
    """Whether scoring runs the bundle's model from its LiteRT copy: frame models on CPU (4x
    cheaper than Keras there); GPUs and song-level (mil) models run Keras."""
    return bundle.level == "frame" and not use_gpu


class SongScorer:
    """Ray Data actor: the I/O around a :class:`pipeline.song_model.SongModel`: it opens the
    bundle, prepares its batches and turns the model's song scores into scorer rows."""

    def __init__(self, bundle_root: str, aggregator: str, zero_shot: str | None = None,
                 precomputed: bool = False, use_gpu: bool = False,
                 lite_model: bytes | None = None, model_id: str | None = None,
                 prepare: tuple | None = None):
        """``lite_model``: the bundle's LiteRT flatbuffer, read once by the driver, when the
        model runs in LiteRT (see :func:`runs_lite`); Keras otherwise. ``model_id``: the
        bundle the driver verified; an actor that finds another there stops the run.
        ``prepare``: (fn, kwargs) the actor applies to its batches first: :func:`decode_batch`
        (catalog rows: decoded here) or :func:`read_feature_songs` (index rows: their parts
        read here); None: batches come ready."""
        from pipeline.song_model import SongModel
        from pipeline.storage.bundle import zero_shot_bundle

        if use_gpu:  # before any model is built: memory growth cannot change afterwards
            gpus_seen_here("score --use-gpu")
        self.prepare = prepare
        bundle = zero_shot_bundle(zero_shot) if zero_shot else read_bundle(bundle_root)
        if model_id is not None and bundle.model_id != model_id:
            raise BundleError(f"{bundle_root} was replaced during the run (model {model_id} "
                              f"became {bundle.model_id}); run again to score with the "
                              f"new one")
        self.classes = bundle.classes
        self.model = SongModel(bundle, aggregator, lite_model=lite_model,
                               from_audio=not precomputed, zero_shot=zero_shot)

    def __call__(self, batch: dict) -> dict:
        if self.prepare is not None:
            read, kwargs = self.prepare
            batch = read(batch, **kwargs)
        xs = list(batch["x"])
        ok = [i for i, x in enumerate(xs) if len(x)]
        n = len(xs)
        genre, confidence = np.array([""] * n, dtype=object), np.zeros(n, np.float32)
        scores = np.zeros((n, len(self.classes)), np.float32)
        if ok:
            found, best = self.model.scores([xs[i] for i in ok])
            scores[ok] = found
            genre[ok] = [self.classes[b] for b in best]
            confidence[ok] = found[np.arange(len(ok)), best]
        return {"song_id": batch["song_id"], "uri": batch["uri"], "error": batch["error"],
                "message": batch["message"], "attempt": batch["attempt"], "genre": genre,
                "confidence": confidence, "n_frames": np.array([len(x) for x in xs], np.int32),
                "probabilities": scores}


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """What a scoring run labels with: the bundle at ``model``, or (``zero_shot`` = "MSD" or
    "MTT") musicnn's own tags; the song aggregator ``aggregate`` (None: ``mean``, or a
    song-level bundle's own pooling); ``top_k`` classes listed per song; ``batch_size`` songs
    per model call; ``use_gpu``: a GPU per model actor; ``songs_per_file`` per label file."""

    model: str | None = None
    zero_shot: str | None = None
    aggregate: str | None = None
    top_k: int = 3
    batch_size: int = 8
    use_gpu: bool = False
    songs_per_file: int = _FILE_SONGS


@dataclasses.dataclass(frozen=True)
class _Scorer:
    """A run's opened model: its ``bundle``, the ``aggregate`` it scores with, and its LiteRT
    copy (``lite``) where it runs in LiteRT."""

    bundle: object
    aggregate: str
    lite: bytes | None


def run_score(source: str, out: str, config: ScoreConfig,
              run: RunOptions = RunOptions()) -> dict:
    """Label every song of ``source`` not yet labelled in ``out`` by this model + aggregator.

    ``source`` is a catalog (audio) or a feature directory from ``genres extract`` whose spec
    fingerprint equals the bundle's. A song whose last try failed for a reason that may pass
    is tried again as ``run.retries`` says. The songs run in windows (``run``), each
    committed as it ends: the driver's memory does not grow with the catalog.
    """
    started = time.perf_counter()
    scorer = _open_scorer(config)
    features, catalog = _open_source(source, scorer.bundle)
    labels = LabelTable(out)
    labels.create()
    limits = connect(run.address, run.bounds, stage="score", gpus=int(config.use_gpu))
    version = labels.log.version()
    todo, n, retried = _plan(catalog, features, labels, scorer, version=version, run=run,
                             cpus=plan_size(limits))
    summary = {"songs": n, "labelled": 0, "failed": 0, "frames": 0, "errors": {}, "commits": 0,
               "out": out, "model_id": scorer.bundle.model_id, "plan": "",
               "limits": limits.describe(), "retried": retried}
    if todo.count():
        if config.use_gpu:
            wait_for([{"GPU": 1}], purpose="score --use-gpu", timeout_s=run.bounds.wait_s,
                     limits=limits)
        summary.update(_label(todo, features, scorer, labels, version=version, config=config,
                              run=run, limits=limits))
    summary["skipped"] = n - summary["labelled"] - summary["failed"]
    summary["seconds"] = time.perf_counter() - started
    return summary


def _open_scorer(config: ScoreConfig) -> _Scorer:
    """The bundle (verified) or zero-shot model, its aggregator, and its LiteRT copy: read
    once here, not in every actor, so a damaged file stops the run before Ray starts and the
    actors never touch TensorFlow for it."""
    if config.zero_shot:
        from pipeline.storage.bundle import zero_shot_bundle
        from pipeline.storage.weights import fetch_wheel

        fetch_wheel()
        bundle = zero_shot_bundle(config.zero_shot)
    else:
        bundle = read_bundle(config.model)
        verify_bundle(bundle)  # a tampered or half-copied bundle stops the run here, by name
    aggregate = _check_aggregator(bundle, config.aggregate)
    if bundle.spec.kind == "table":
        raise ParameterError(f"{config.model} was trained on a frame table "
                             f"({len(bundle.spec.features)} columns), not on audio features; "
                             f"it cannot score audio")
    lite = (read_lite_model(bundle) if not config.zero_shot and runs_lite(bundle, config.use_gpu)
            else None)
    return _Scorer(bundle, aggregate, lite)


def _open_source(source: str, bundle) -> tuple[FeatureStore | None, CatalogSource | None]:
    """(``source`` as a feature directory of the bundle's spec, or None; as a catalog,
    resolved once here, or None): a catalog that is not there stops the run before Ray
    starts."""
    if not fsio.exists(fsio.join(source, SPEC_FILE)):
        return None, describe_catalog(source)
    features = FeatureStore(source)
    _check_features(features, bundle)
    return features, None


def _plan(catalog: CatalogSource | None, features, labels: LabelTable, scorer: _Scorer, *,
          version: int, run: RunOptions, cpus: int):
    """(the songs to score: catalog or index rows, materialized; the songs in the catalog or
    feature directory; the songs tried again): those this model and aggregator have not
    labelled at ``version``, and failed songs due again."""
    if features is not None:
        songs, n = _feature_songs(features, cpus)
    else:
        songs, n = catalog_dataset(catalog, cpus=cpus)
    # errors carried from a feature directory stay until it is re-extracted
    retry = "all" if run.retry_errors else "none" if features is not None else "transient"
    marks = _labelled(labels, scorer.bundle.model_id, scorer.aggregate, version, retry=retry,
                      retries=run.retries, cpus=cpus)
    todo = todo_of(songs, marks, partitions=partitions(n, cpus))
    if features is None:  # each song's file looked up in the same pass (see _absent)
        todo = todo.map_batches(check_files, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"retries": run.retries})
    todo = todo.materialize()
    return todo, n, tried_again(todo) if marks is not None else 0


def _label(todo, features, scorer: _Scorer, labels, *, version: int, config: ScoreConfig,
           run: RunOptions, limits) -> dict:
    """Score the songs ``todo`` into label files and commit them; the run's figures."""
    bundle = scorer.bundle
    run_id = new_run_id()
    write = functools.partial(
        _write, root=labels.root, model_id=bundle.model_id, classes=bundle.classes,
        top_k=config.top_k, aggregator=scorer.aggregate, run_id=run_id,
        songs_per_file=config.songs_per_file,
        scored_at=datetime.datetime.now(datetime.timezone.utc))
    committer = Committer(
        labels.log, run_id=run_id, version=version, every_s=run.commit_every_s,
        relevant=lambda add: add["partition"].get("model_id") == bundle.model_id,
        resolve=resolver(_Rewrite(labels.root, bundle.model_id),
                         key_columns=["song_id", "aggregator", "error"],
                         matches=aggregator_is(scorer.aggregate)))
    carried = {"batch_format": "pyarrow", "batch_size": None,
               "fn_kwargs": {"n_classes": len(bundle.classes)}}
    if features is not None:  # songs that failed extraction become error rows as they are
        ok = todo.map_batches(_where_error, batch_format="pyarrow", batch_size=None,
                              fn_kwargs={"failed": False}).materialize()
        failed = _last_errors(todo, ok, plan_size(limits))
        if failed is not None:
            commit_stream(write(failed.map_batches(carried_errors, **carried)), committer)
        # songs of one part next to each other: each part is read once per block
        todo = ok.sort("part").materialize()
    size = run.songs_per_window or plan_window(limits, _BLOCK_SONGS)
    if features is None:  # songs whose files are not there become error rows as they are
        todo, absent = _absent(todo)
        n, per_file = absent.count(), config.songs_per_file * _ERROR_FILE_FACTOR
        # a window of them makes as many write tasks (a file each) as one of songs has blocks
        for window in windows(absent, n, size * per_file // _BLOCK_SONGS) if n else ():
            commit_stream(write(window.map_batches(carried_errors, **carried),
                                songs_per_file=per_file), committer)
    plan, n = "", todo.count()
    for window in windows(todo, n, size) if n else ():  # each committed as it ends
        written = write(_scored(work_blocks(window, plan_size(limits)), features, scorer,
                                config=config, limits=limits, retries=run.retries))
        commit_stream(written, committer)
        plan = _executed_plan(written)
    totals = committer.totals
    return {"labelled": totals.get("labelled", 0), "failed": totals.get("failed", 0),
            "frames": totals.get("frames", 0), "errors": totals.get("errors", {}),
            "commits": committer.commits, "refused": committer.refused,
            "resolved": committer.resolved, "run_id": run_id, "plan": plan}


def _absent(checked):
    """(the catalog rows of ``checked`` (:func:`check_files`) whose files may be there, the
    others with their ``missing`` error: both materialized).

    A file known not to be there (:func:`missing_files`) skips the model actors: through
    them, in batches of a few songs (as real audio needs), 100k missing songs took 15 s of a
    night on 2 CPUs; this way 1.4 s. All of a run's songs are checked in one pass, before its
    windows: the rows of the files that are not there are written in windows of their own,
    far larger (a window's fixed cost is ~1-2 s, and a missing song ~10 us)."""
    absent = checked.map_batches(_where_error, batch_format="pyarrow", batch_size=None,
                                 fn_kwargs={"failed": True}).materialize()
    present = checked.map_batches(_where_error, batch_format="pyarrow", batch_size=None,
                                  fn_kwargs={"failed": False}).drop_columns(
        ["error", "message", "attempt"]).materialize()
    return present, absent


def check_files(batch: pa.Table, *, retries: RetryPolicy) -> pa.Table:
    """Ray Data fn: catalog rows (with ``tries``) + ``error``, ``message`` and ``attempt``
    where the file is known not to be there (:func:`missing_files`; null elsewhere)."""
    tries = batch.column("tries").to_numpy() if batch.num_rows else np.zeros(0, np.int32)
    found = missing_files(batch.column("uri").to_pylist(), tries.tolist())
    attempt = tries + 1
    error = np.full(len(found), None, dtype=object)
    message = error.copy()
    for i in (i for i, e in enumerate(found) if e):  # what decode_batch records for them
        error[i] = retries.kind(found[i].kind, int(attempt[i]))
        message[i] = gone_message(found[i], int(attempt[i]), retries)
    return batch.append_column("error", pa.array(error, pa.string())).append_column(
        "message", pa.array(message, pa.string())).append_column(
        "attempt", pa.array(attempt, pa.int32()))


def work_blocks(todo, cpus: int):
    """``todo`` (materialized) in blocks of at most ``_BLOCK_SONGS`` songs, at least 4 per CPU
    of the ``cpus`` the job may use (:func:`plan_batches`; more songs a block for a catalog of
    over ~100 blocks per CPU), materialized: enough blocks for every actor the pool starts
    with, a retried block redoes seconds of work, and the last blocks spread evenly over the
    actors (at 200 songs a block, 600 songs made 8 blocks of ~7 s each on 2 actors). Made
    before any model actor starts: the actors may hold every CPU, and a repartition task
    waiting for one would stall them."""
    n = todo.count()  # materialized
    rows = max(plan_batches(n, cpus, max_batch=_BLOCK_SONGS), math.ceil(n / (100 * cpus)))
    return todo.repartition(target_num_rows_per_block=rows).materialize()


def _write(scored, **kwargs):
    """Label files of ``scored`` rows, written by tasks that ask for no CPU: writing a file
    is light, and the model actors may hold every CPU (a write task waiting for one would
    stall them behind their unread output)."""
    size = kwargs.pop("songs_per_file")
    return map_bounded(scored, write_labels, retries={"max_retries": _RETRIES},
                       batch_size=size, batch_format="numpy", num_cpus=0, fn_kwargs=kwargs)


def _scored(todo, features, scorer: _Scorer, *, config: ScoreConfig, limits,
            retries: RetryPolicy):
    """The dataset of scorer rows (one per song) of the songs ``todo`` (catalog rows, or
    index rows of a feature directory in part order, in blocks: :func:`work_blocks`)."""
    bundle, batch_size = scorer.bundle, config.batch_size
    most, resources = _model_actors(bundle, limits.cpus, limits.gpus, use_gpu=config.use_gpu,
                                    precomputed=features is not None,
                                    aggregator=scorer.aggregate)
    # light actors read or decode their songs themselves (no task waits for a CPU they
    # hold, frames never cross the object store); heavy ones leave it to tasks
    if features is not None:
        prepare = (read_feature_songs, {"root": features.root, "column": bundle.feature})
    else:
        prepare = (decode_batch, {"spec": bundle.spec, "feature": bundle.feature,
                                  "retries": retries})
    if resources == {"num_cpus": 1}:
        songs = todo
        # a batch of about a part's songs: each part is read once per batch
        batch_size = max(batch_size, _BLOCK_SONGS) if features is not None else batch_size
    else:
        read, kwargs = prepare
        songs = map_bounded(todo, read, retries={"max_retries": _RETRIES},
                            batch_size=None if features is not None else 2,
                            batch_format="numpy", num_cpus=1, fn_kwargs=kwargs)
        prepare = None
    # bounded: Ray Data restarts a dead actor without limit by default
    return map_bounded(songs, SongScorer, retries=ACTOR_RETRIES,
                       batch_size=batch_size, batch_format="numpy",
                       fn_constructor_kwargs={"bundle_root": bundle.root,
                                              "aggregator": scorer.aggregate,
                                              "zero_shot": config.zero_shot,
                                              "precomputed": features is not None,
                                              "use_gpu": config.use_gpu,
                                              "lite_model": scorer.lite,
                                              "model_id": bundle.model_id, "prepare": prepare},
                       compute=actor_pool(most, todo.num_blocks()), **resources)


def write_labels(batch: dict, *, root: str, model_id: str, classes: list[str], top_k: int,
                 aggregator: str, run_id: str, scored_at) -> pa.Table:
    """Ray Data fn: scorer rows -> one label file of the table (uncommitted) -> its add row."""
    rows = label_rows(batch, classes=classes, top_k=top_k, aggregator=aggregator,
                      scored_at=scored_at, run_id=run_id)
    add = LabelTable(root).write(rows, model_id=model_id,
                                 name=f"part-{run_id}-{uuid.uuid4().hex[:12]}")
    return pa.Table.from_pylist([add], schema=ADD_SCHEMA)


class _Rewrite:
    """A pending label file rewritten without some songs (see ``LabelTable.without_songs``)."""

    def __init__(self, root: str, model_id: str):
        self.root, self.model_id = root, model_id

    def __call__(self, add: dict, song_ids: set[str], name: str) -> dict | None:
        return LabelTable(self.root).without_songs(add, song_ids, name=name,
                                                   model_id=self.model_id)


def _where_error(batch: pa.Table, *, failed: bool) -> pa.Table:
    """Ray Data fn: the index rows of songs that failed extraction, or of those that did not."""
    error = batch.column("error")
    return batch.filter(pc.is_valid(error) if failed else pc.is_null(error))


def _last_errors(index, ok, cpus: int):
    """The index rows of songs that failed extraction and never got frames, the latest of
    each (a song tried again after a transient error has a row per try); None when none."""
    failed = index.map_batches(_where_error, batch_format="pyarrow", batch_size=None,
                               fn_kwargs={"failed": True}).materialize()
    if not failed.count():
        return None
    n = partitions(failed.count(), cpus)
    if ok.count():
        failed = without(failed, ok, partitions=n)
    return latest_per_song(failed, latest_rows, partitions=n)


def _feature_songs(features: FeatureStore, cpus: int):
    """(a feature directory's index rows as a materialized dataset, their number)."""
    files = features.index_files()
    if not files:
        raise CatalogError(f"{features.root} has no committed songs; run `genres extract`")
    songs = table_rows(files, _SONG_COLUMNS, cpus=cpus).materialize()
    return songs, songs.count()


_SONG_COLUMNS = pa.schema([INDEX_SCHEMA.field(name) for name in (
    "song_id", "uri", "part", "error", "message", "run_id", "attempt")])
_PLAN_COLUMNS = pa.schema([FILE_SCHEMA.field(name) for name in (
    "song_id", "aggregator", "error", "attempt", "run_id")])


def _labelled(labels: LabelTable, model_id: str, aggregator: str, version: int, *, retry: str,
              retries: RetryPolicy, cpus: int):
    """The marks of what this model and aggregator did at ``version`` (:func:`plan_retries`,
    ``retry``): what the run leaves alone or tries again; None when it did nothing."""
    files = labels.done_files(model_id, version)
    if not files:
        return None
    rows = table_rows(files, _PLAN_COLUMNS, cpus=cpus).map_batches(
        _of_aggregator, batch_format="pyarrow", batch_size=None,
        fn_kwargs={"aggregator": aggregator})
    return plan_retries(rows, retry=retry, policy=retries, now=utc_now())


def _of_aggregator(batch: pa.Table, *, aggregator: str) -> pa.Table:
    return batch.filter(pc.equal(batch.column("aggregator"), aggregator)).select(
        ["song_id", "error", "attempt", "run_id"])


def _model_actors(bundle, cpus: int, gpus: int, *, use_gpu: bool, precomputed: bool,
                  aggregator: str) -> tuple[int, dict]:
    """(most model actors, the Ray remote args of each) for scoring ``bundle`` with at most
    ``cpus`` CPUs and ``gpus`` GPUs; the pool starts at what the songs need (:func:`actor_pool`).

    On CPU a frame model runs in LiteRT on one thread and costs about a third of the decoding
    that feeds it (cnn2d, 600 songs: 10.6 core-s of inference, 25 core-s of decode + features)
    in a few MB. Its actors (``num_cpus=1`` and no other resource) decode their songs
    themselves: one actor per CPU decodes, featurises and scores its songs, and frames never
    cross the object store. TensorFlow in the actor (on a GPU, musicnn's network, ``mil``, the
    ``sequence`` aggregator's GRU) is ~1 GB per actor: fewer actors, ``_TF_ACTOR_MEMORY``
    each, and decoding stays in tasks.
    """
    if use_gpu:
        return gpus, {"num_cpus": 1, "num_gpus": 1, "memory": _TF_ACTOR_MEMORY}
    if (runs_lite(bundle, use_gpu) and aggregator != "sequence"
            and (bundle.spec.kind != "musicnn" or precomputed)):
        return cpus, {"num_cpus": 1}
    return max(1, cpus // 2), {"num_cpus": 1, "memory": _TF_ACTOR_MEMORY}


def _check_features(features: FeatureStore, bundle) -> None:
    """Refuse a feature directory extracted with another spec than the bundle's."""
    spec = features.read_spec()
    if spec.fingerprint() != bundle.spec.fingerprint():
        raise SpecMismatchError(
            f"{features.root} was extracted with feature spec {spec.fingerprint()}, the model "
            f"with {bundle.spec.fingerprint()} ({spec_difference(spec, bundle.spec)}); "
            f"re-extract with the model's settings or score the audio catalog instead")


def spec_difference(a, b) -> str:
    """The settings two specs disagree on, as ``name a != b`` (or their kinds)."""
    if a.kind != b.kind:
        return f"kind {a.kind} != {b.kind}"
    x, y = a.to_dict(), b.to_dict()
    return ", ".join(f"{k} {x[k]} != {y[k]}" for k in x if x[k] != y.get(k)) or "same settings"


def _executed_plan(ds) -> str:
    """Operator names of the executed dataset, e.g. ``MapBatches(decode_batch)``."""
    import re

    return " -> ".join(re.findall(r"^Operator \d+ ([^:]+):", ds.stats(), re.M))


def _check_aggregator(bundle, aggregate: str | None) -> str:
    """The aggregator to use; a song-level (mil) bundle aggregates itself."""
    if bundle.level == "song":
        if aggregate not in (None, *bundle.aggregators):
            raise ParameterError(f"{bundle.model} bundles pool frames themselves; drop "
                                 f"--aggregate {aggregate}")
        return bundle.aggregators[0]
    aggregate = aggregate or "mean"
    if aggregate not in bundle.aggregators:
        raise ParameterError(f"--aggregate {aggregate}: this bundle offers "
                             f"{', '.join(bundle.aggregators)} (retrain for a sequence aggregator)")
    return aggregate
