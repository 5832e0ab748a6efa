"""Scoring on Ray Data: catalog -> decode + features (tasks) -> model (actor pool) -> labels.

Each row carries one whole song (its frames as one tensor), so song aggregation needs no
shuffle or groupby over the catalog.
"""

from __future__ import annotations

import datetime
import logging
import time

import numpy as np
import pyarrow as pa

from pipeline.errors import AudioError, ParameterError
from pipeline.extract import frame_song, musicnn_input
from pipeline.features.bags import make_bags
from pipeline.features.musicnn import N_MELS as MUSICNN_MELS, PATCH_FRAMES
from pipeline.models.aggregate import aggregate, decide
from pipeline.runtime.session import RUNTIME_ENV, cluster_cpus, init_ray
from pipeline.storage.bundle import read_bundle
from pipeline.storage.catalog import Song, load_catalog
from pipeline.storage.labels import LABEL_SCHEMA, LabelStore
from pipeline.storage.shards import ERROR_SCHEMA

log = logging.getLogger(__name__)

_PART_SONGS = 2000  # songs per committed labels part: a killed run keeps finished parts


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
    xs = np.empty(len(out["x"]), dtype=object)
    xs[:] = out["x"]
    return {**{k: np.array(v, dtype=object) for k, v in out.items() if k != "x"}, "x": xs}


class SongScorer:
    """Ray Data actor: the bundle's model over whole songs, then song aggregation."""

    def __init__(self, bundle_root: str, aggregator: str, zero_shot: str | None = None):
        from pipeline.storage.bundle import SEQUENCE_FILE, load_keras_model, zero_shot_bundle

        self.aggregator = aggregator
        self.musicnn = self.model = self.sequence = None
        if zero_shot:  # musicnn's own tags, no trained head
            from pipeline.extract import pretrained_musicnn

            self.bundle = zero_shot_bundle(zero_shot)
            self.musicnn = pretrained_musicnn(zero_shot)
            return
        self.bundle = read_bundle(bundle_root)
        self.model = load_keras_model(self.bundle)
        if aggregator == "sequence":
            self.sequence = load_keras_model(self.bundle, SEQUENCE_FILE)
        if self.bundle.spec.kind == "musicnn":
            from pipeline.models.musicnn import build_musicnn, load_weights

            self.musicnn = build_musicnn()
            load_weights(self.musicnn, self.bundle.musicnn_variables())

    def song_scores(self, songs: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """(song scores [n_classes], winning class) of each song's model input [n_frames, ...]."""
        if self.model is None:
            return self._aggregate([self.musicnn.predict(x, batch_size=32, verbose=0)["taggram"]
                                    for x in songs])
        if self.musicnn is not None:
            songs = [self.musicnn.predict(x, batch_size=32, verbose=0)["penultimate"]
                     for x in songs]
        songs = [self.bundle.normalize(x) for x in songs]
        if self.bundle.level == "song":  # bags: the model pools the frames of each song itself
            n = np.array([len(x) for x in songs])
            frames, mask, _ = make_bags(np.concatenate(songs), np.repeat(np.arange(len(songs)), n))
            probs = self.model.predict([frames, mask], batch_size=8, verbose=0)
            return [(p, int(np.argmax(p))) for p in probs]
        frames = self.model.predict(np.concatenate(songs), batch_size=64, verbose=0)
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


def run_score(catalog: str, model: str | None, out: str, *, aggregate: str | None = None,
              batch_size: int = 8, address: str | None = None, use_gpu: bool = False,
              zero_shot: str | None = None, top_k: int = 3) -> dict:
    """Label every song of ``catalog`` not yet labelled in ``out`` by this model + aggregator.

    ``zero_shot="MSD"|"MTT"`` labels with musicnn's own tags instead of a trained bundle.
    ``aggregate`` defaults to ``mean`` (frame models) or the bundle's own pooling (``mil``).
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
    if bundle.spec.kind == "table":
        raise ParameterError(f"{model} was trained on a frame table ({len(bundle.spec.features)} "
                             f"columns), not on audio features; it cannot score audio")
    songs = load_catalog(catalog)
    store = LabelStore(out)
    store.remove_uncommitted()
    done = store.labelled(bundle.model_id, aggregate)
    todo = [s for s in songs if s.song_id not in done]
    summary = {"songs": len(songs), "skipped": len(songs) - len(todo), "labelled": 0,
               "failed": 0, "frames": 0, "out": out, "model_id": bundle.model_id}
    if todo:
        init_ray(address)
        import ray

        cpus = cluster_cpus()
        items = [{"song_id": s.song_id, "uri": s.uri} for s in todo]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 4 * cpus)))
        ds = ds.map_batches(decode_batch, batch_size=2, batch_format="numpy",
                            fn_kwargs={"spec": bundle.spec, "feature": bundle.feature},
                            runtime_env=RUNTIME_ENV)
        ds = ds.map_batches(SongScorer, batch_size=batch_size, batch_format="numpy",
                            fn_constructor_kwargs={"bundle_root": bundle.root,
                                                   "aggregator": aggregate,
                                                   "zero_shot": zero_shot},
                            compute=ray.data.ActorPoolStrategy(min_size=1,
                                                               max_size=max(1, cpus // 2)),
                            num_gpus=1 if use_gpu else 0, runtime_env=RUNTIME_ENV)
        rows, errors, index = [], [], store.next_index()
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
    summary["seconds"] = time.perf_counter() - started
    return summary


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
