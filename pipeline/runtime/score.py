"""Scoring on Ray Data: catalog -> decode + features (tasks) -> model (actor pool) -> labels.

The input is a catalog of audio (decoded and featurised with the bundle's spec) or a feature
directory written by ``genres extract`` (its spec must match the bundle's). Each row carries one
whole song (its frames as one tensor), so song aggregation needs no shuffle or groupby over the
catalog. Labels are committed in parts as the stream goes, so memory does not grow with it.
"""

from __future__ import annotations

import datetime
import functools
import logging
import time

import numpy as np
import pyarrow as pa

from pipeline.errors import AudioError, ParameterError, SpecMismatchError
from pipeline.extract import frame_song, musicnn_input
from pipeline.features.bags import make_bags
from pipeline.features.musicnn import N_MELS as MUSICNN_MELS, PATCH_FRAMES
from pipeline.models.aggregate import aggregate, decide
from pipeline.runtime.session import cluster_cpus, init_ray
from pipeline.storage.bundle import read_bundle, read_lite_model
from pipeline.storage.catalog import Song, load_catalog
from pipeline.storage import fs as fsio
from pipeline.storage.labels import LABEL_SCHEMA, LabelStore
from pipeline.storage.shards import ERROR_SCHEMA, SPEC_FILE, FeatureStore, tensor_values

log = logging.getLogger(__name__)

_PART_SONGS = 2000  # songs per committed labels part: a killed run keeps finished parts
_BLOCK_SONGS = 32  # at most this many songs per Ray Data block (as in extract's tasks)
_TF_ACTOR_MEMORY = 1536 * 1024**2  # reserved per TensorFlow model actor (a mil actor: ~1 GB RSS)


def decode_batch(batch: dict, *, spec, feature: str) -> dict:
    """Ray Data map_batches fn: one row per song with the model input of all its frames.

    Frame bundles: the feature column [n_frames, bands, t]. Embedding bundles: musicnn's input
    patches [n_patches, 187, 96] (the network itself runs in the model actors).
    """
    out = {"song_id": [], "uri": [], "error": [], "message": [], "x": []}
    if spec.kind == "musicnn":
        shape, compute = (PATCH_FRAMES, MUSICNN_MELS), lambda song: musicnn_input(song, spec)["patches"]
    else:
        shape, compute = spec.columns()[feature], lambda song: frame_song(song, spec)[feature]
    for song_id, uri in zip(batch["song_id"], batch["uri"]):
        try:
            x, error, message = compute(Song(song_id, uri)), "", ""
        except AudioError as e:
            x, error, message = np.zeros((0, *shape), np.float32), e.kind, str(e)
        for key, value in (("song_id", song_id), ("uri", uri), ("error", error),
                           ("message", message), ("x", x.astype(np.float32))):
            out[key].append(value)
    return _song_batch(out)


def _song_batch(columns: dict[str, list]) -> dict:
    """Lists per column -> a numpy batch; ``x`` holds one [n_frames, ...] array per song."""
    xs = np.empty(len(columns["x"]), dtype=object)
    xs[:] = columns["x"]
    return {**{k: np.array(v, dtype=object) for k, v in columns.items() if k != "x"}, "x": xs}


def read_feature_part(batch: dict, *, root: str, column: str) -> dict:
    """Ray Data map_batches fn: committed feature parts -> one row per listed song.

    A part holds every frame of its songs (extract writes whole songs per part), so grouping
    by song_id inside one part is enough.
    """
    store = FeatureStore(root)
    out = {"song_id": [], "uri": [], "error": [], "message": [], "x": []}
    for part, songs in zip(batch["part"], batch["songs"]):
        table = store.read_part(part, ["song_id", "frame", column])
        ids = table.column("song_id").to_numpy(zero_copy_only=False)
        values = tensor_values(table.column(column))
        frames = table.column("frame").to_numpy()
        for song_id in songs:
            rows = np.flatnonzero(ids == song_id)
            out["song_id"].append(song_id)
            out["uri"].append(store.part_uri(part))
            out["error"].append("")
            out["message"].append("")
            out["x"].append(values[rows[np.argsort(frames[rows])]].astype(np.float32))
    return _song_batch(out)


def runs_lite(bundle, use_gpu: bool) -> bool:
    """Whether scoring runs the bundle's model from its LiteRT copy: frame models on CPU (4x
    cheaper than Keras there); GPUs and song-level (mil) models run Keras."""
    return bundle.level == "frame" and not use_gpu


class SongScorer:
    """Ray Data actor: the bundle's model over whole songs, then song aggregation."""

    def __init__(self, bundle_root: str, aggregator: str, zero_shot: str | None = None,
                 precomputed: bool = False, use_gpu: bool = False,
                 lite_model: bytes | None = None):
        """``lite_model``: the bundle's LiteRT flatbuffer, read once by the driver, when the
        model runs in LiteRT (see :func:`runs_lite`); Keras otherwise."""
        from pipeline.models.keras import tf_keras
        from pipeline.storage.bundle import SEQUENCE_FILE, load_keras_model, zero_shot_bundle

        if use_gpu:  # before any model is built: memory growth cannot change afterwards
            tf_keras()
            import tensorflow as tf

            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        self.aggregator = aggregator
        self.musicnn = self.model = self.sequence = None
        if zero_shot:  # musicnn's own tags, no trained head
            self.bundle = zero_shot_bundle(zero_shot)
            if not precomputed:  # from a feature directory the taggram is already there
                from pipeline.extract import pretrained_musicnn

                self.musicnn = pretrained_musicnn(zero_shot)
            return
        self.bundle = read_bundle(bundle_root)
        if lite_model is not None:
            from pipeline.models.lite import LiteModel

            self.model = LiteModel(lite_model, threads=1)
            self.predict_frames = self.model.predict
        else:
            self.model = load_keras_model(self.bundle)
            self.predict_frames = functools.partial(self.model.predict, batch_size=64, verbose=0)
        if aggregator == "sequence":
            self.sequence = load_keras_model(self.bundle, SEQUENCE_FILE)
        if self.bundle.spec.kind == "musicnn" and not precomputed:
            from pipeline.models.musicnn import build_musicnn, load_weights

            self.musicnn = build_musicnn()
            load_weights(self.musicnn, self.bundle.musicnn_variables())

    def song_scores(self, songs: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """(song scores [n_classes], winning class) of each song's model input [n_frames, ...]."""
        if self.model is None:  # zero-shot: musicnn's taggram (computed here or precomputed)
            if self.musicnn is not None:
                songs = [self.musicnn.predict(x, batch_size=32, verbose=0)["taggram"]
                         for x in songs]
            return self._aggregate(songs)
        if self.musicnn is not None:
            songs = [self.musicnn.predict(x, batch_size=32, verbose=0)["penultimate"]
                     for x in songs]
        songs = [self.bundle.normalize(x) for x in songs]
        if self.bundle.level == "song":  # bags: the model pools the frames of each song itself
            n = np.array([len(x) for x in songs])
            frames, mask, _ = make_bags(np.concatenate(songs), np.repeat(np.arange(len(songs)), n))
            probs = self.model.predict([frames, mask], batch_size=8, verbose=0)
            return [(p, int(np.argmax(p))) for p in probs]
        frames = self.predict_frames(np.concatenate(songs))
        bounds = np.cumsum([0] + [len(x) for x in songs])
        return self._aggregate([frames[a:b] for a, b in zip(bounds[:-1], bounds[1:])])

    def _aggregate(self, probs: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        if self.aggregator == "sequence":
            from pipeline.models.sequence import sequence_scores

            return [(s, int(np.argmax(s))) for s in sequence_scores(self.sequence, probs)]
        out = []
        for p in probs:
            s = aggregate(p, self.aggregator)
            out.append((s, decide(s, p)))
        return out

    def __call__(self, batch: dict) -> dict:
        xs = list(batch["x"])
        ok = [i for i, x in enumerate(xs) if len(x)]
        n = len(xs)
        genre, confidence = [""] * n, np.zeros(n, np.float32)
        scores = np.zeros((n, len(self.bundle.classes)), np.float32)
        if ok:
            for i, (s, best) in zip(ok, self.song_scores([xs[i] for i in ok])):
                genre[i], confidence[i], scores[i] = self.bundle.classes[best], s[best], s
        return {"song_id": batch["song_id"], "uri": batch["uri"], "error": batch["error"],
                "message": batch["message"], "genre": np.array(genre, dtype=object),
                "confidence": confidence, "n_frames": np.array([len(x) for x in xs], np.int32),
                "probabilities": scores}


def run_score(source: str, model: str | None, out: str, *, aggregate: str | None = None,
              batch_size: int = 8, address: str | None = None, use_gpu: bool = False,
              zero_shot: str | None = None, top_k: int = 3) -> dict:
    """Label every song of ``source`` not yet labelled in ``out`` by this model + aggregator.

    ``source`` is a catalog (audio) or a feature directory from ``genres extract`` whose spec
    fingerprint equals the bundle's. ``zero_shot="MSD"|"MTT"`` labels with musicnn's own tags
    instead of a trained bundle. ``aggregate`` defaults to ``mean`` (frame models) or the
    bundle's own pooling (``mil``). ``use_gpu`` gives each model actor one GPU.
    """
    started = time.perf_counter()
    if zero_shot:
        from pipeline.storage.bundle import zero_shot_bundle
        from pipeline.storage.weights import fetch_wheel

        fetch_wheel()
        bundle = zero_shot_bundle(zero_shot)
    else:
        bundle = read_bundle(model)
    aggregate = _check_aggregator(bundle, aggregate)
    features = FeatureStore(source) if fsio.exists(fsio.join(source, SPEC_FILE)) else None
    if bundle.spec.kind == "table":
        raise ParameterError(f"{model} was trained on a frame table ({len(bundle.spec.features)} "
                             f"columns), not on audio features; it cannot score audio")
    store = LabelStore(out)
    store.remove_uncommitted()
    done = store.labelled(bundle.model_id, aggregate)
    carried = []  # feature directories: songs that already failed extraction
    if features is not None:
        items, carried, n_songs = _feature_items(features, bundle, done)
    else:
        songs = load_catalog(source)
        items = [{"song_id": s.song_id, "uri": s.uri} for s in songs if s.song_id not in done]
        n_songs = len(songs)
    todo = sum(len(i["songs"]) for i in items) if features is not None else len(items)
    summary = {"songs": n_songs, "skipped": n_songs - todo - len(carried), "labelled": 0,
               "failed": 0, "frames": 0, "out": out, "model_id": bundle.model_id}
    index = store.next_index()
    if carried and not items:
        _commit(store, index, [], carried, bundle.model_id, aggregate, summary)
    if items:
        # Read (or, for an old bundle, converted) once here, not in every actor: a damaged
        # file stops the run before Ray starts, and the actors never touch TensorFlow for it.
        lite = read_lite_model(bundle) if not zero_shot and runs_lite(bundle, use_gpu) else None
        init_ray(address)
        import ray

        cpus = cluster_cpus()
        # Blocks of at most _BLOCK_SONGS songs: enough blocks to keep every CPU decoding, a
        # retried block redoes seconds of work, and the last blocks spread evenly over the
        # actors (at 200 songs a block, 600 songs made 8 blocks of ~7 s each on 2 actors).
        blocks = max(4 * cpus, -(-len(items) // _BLOCK_SONGS))
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), blocks)))
        # Songs in, one row per song out, on CPU tasks (bad audio never raises; Ray Data
        # retries a task whose worker died, so its songs are redone).
        if features is not None:
            ds = ds.map_batches(read_feature_part, batch_size=1, batch_format="numpy",
                                fn_kwargs={"root": features.root, "column": bundle.feature},
                                num_cpus=1)
        else:
            ds = ds.map_batches(decode_batch, batch_size=2, batch_format="numpy",
                                fn_kwargs={"spec": bundle.spec, "feature": bundle.feature},
                                num_cpus=1)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if use_gpu and not gpus:
            raise ParameterError("--use-gpu: the Ray cluster has no GPUs")
        # light actors take decoding in (Ray Data fuses it), heavy ones leave it to the tasks
        least, most, resources = _model_actors(bundle, cpus, gpus, use_gpu=use_gpu,
                                               precomputed=features is not None,
                                               aggregator=aggregate)
        ds = ds.map_batches(SongScorer, batch_size=batch_size, batch_format="numpy",
                            fn_constructor_kwargs={"bundle_root": bundle.root,
                                                   "aggregator": aggregate,
                                                   "zero_shot": zero_shot,
                                                   "precomputed": features is not None,
                                                   "use_gpu": use_gpu,
                                                   "lite_model": lite},
                            compute=ray.data.ActorPoolStrategy(min_size=least, max_size=most),
                            **resources)
        rows, errors = [], list(carried)
        scored_at = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["song_id"])):
                if batch["error"][i]:
                    errors.append({k: str(batch[k][i]) for k in ERROR_SCHEMA.names})
                    continue
                rows.append({"song_id": batch["song_id"][i], "uri": batch["uri"][i],
                             "genre": batch["genre"][i],
                             "confidence": float(batch["confidence"][i]),
                             "probabilities": list(zip(bundle.classes,
                                                       batch["probabilities"][i].tolist())),
                             "top_tags": [bundle.classes[j] for j in
                                          np.argsort(-batch["probabilities"][i])[:top_k]],
                             "n_frames": int(batch["n_frames"][i]), "aggregator": aggregate,
                             "model_id": bundle.model_id, "scored_at": scored_at})
                summary["frames"] += int(batch["n_frames"][i])
            if len(rows) + len(errors) >= _PART_SONGS:
                _commit(store, index, rows, errors, bundle.model_id, aggregate, summary)
                rows, errors, index = [], [], index + 1
        if rows or errors:
            _commit(store, index, rows, errors, bundle.model_id, aggregate, summary)
        summary["plan"] = _executed_plan(ds)
    summary["seconds"] = time.perf_counter() - started
    return summary


def _model_actors(bundle, cpus: int, gpus: int, *, use_gpu: bool, precomputed: bool,
                  aggregator: str) -> tuple[int, int, dict]:
    """(fewest model actors, most, the Ray remote args of each) for scoring ``bundle``.

    On CPU a frame model runs in LiteRT on one thread and costs about a third of the decoding
    that feeds it (cnn2d, 600 songs: 10.6 core-s of inference, 25 core-s of decode + features)
    in a few MB. Its actors ask for exactly what a decode task asks for (``num_cpus=1`` and no
    other key: Ray Data fuses two maps only when their remote args are equal), so decoding
    runs inside them: one actor per CPU decodes, featurises and scores its songs, and frames
    never cross the object store. They start in a second and do all the work, so the pool
    starts full (autoscaled from 1, the second actor came ~10 s into a 20 s run). TensorFlow
    in the actor (on a GPU, musicnn's network, ``mil``, the ``sequence`` aggregator's GRU) is
    ~1 GB per actor: fewer actors, ``_TF_ACTOR_MEMORY`` each, and decoding stays in tasks.
    """
    if use_gpu:
        return 1, gpus, {"num_cpus": 1, "num_gpus": 1, "memory": _TF_ACTOR_MEMORY}
    if (runs_lite(bundle, use_gpu) and aggregator != "sequence"
            and (bundle.spec.kind != "musicnn" or precomputed)):
        return cpus, cpus, {"num_cpus": 1}
    return 1, max(1, cpus // 2), {"num_cpus": 1, "memory": _TF_ACTOR_MEMORY}


def _feature_items(features, bundle, done: set[str]):
    """Work items (one per committed part, with its songs still to label), the extraction
    errors not yet carried into the labels, and the number of songs in the directory."""
    spec = features.read_spec()
    if spec.fingerprint() != bundle.spec.fingerprint():
        raise SpecMismatchError(
            f"{features.root} was extracted with feature spec {spec.fingerprint()}, the model "
            f"with {bundle.spec.fingerprint()} ({spec_difference(spec, bundle.spec)}); "
            f"re-extract with the model's settings or score the audio catalog instead")
    items, n_songs = [], 0
    for record in features.commits().values():
        n_songs += len(record["songs"]) + len(record["errors"])
        songs = [s for s in record["songs"] if s not in done]
        if songs:
            items.append({"part": record["part"], "songs": songs})
    carried = [{k: str(v) for k, v in row.items()}
               for row in features.read_errors().to_pylist() if row["song_id"] not in done]
    return items, carried, n_songs


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


def _commit(store, index, rows, errors, model_id, aggregator, summary) -> None:
    store.write_part(index, pa.Table.from_pylist(rows, schema=LABEL_SCHEMA),
                     pa.Table.from_pylist(errors, schema=ERROR_SCHEMA),
                     model_id=model_id, aggregator=aggregator)
    summary["labelled"] += len(rows)
    summary["failed"] += len(errors)
    log.info("score: committed part %d (%d labels, %d errors)", index, len(rows), len(errors))
