"""A fit's evaluation by song, in the cluster, as scoring runs its bundle.

Actors open the fit as a :class:`pipeline.song_model.SongModel` (in LiteRT for frame models,
as scoring runs them on CPU) over whole songs of the validation and test splits, read from
the feature parts in the actor as scoring reads a feature directory, and turn each song into
one row: its frames' sums (every aggregator's scores follow from them), or a song-level
model's probabilities. The driver holds no row per song: a bounded sample of validation songs
(``_SAMPLE_SONGS``) comes back to fit the temperature and the ``sequence`` aggregator on, and
every split's figures are tallied block by block in the cluster (confusion matrices, log-loss
sums, reliability bins: :func:`pipeline.evaluate.tally`); the driver merges a tally per
block.
"""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.evaluate import (fitted_temperature, merge_tallies, scored_accuracy, song_scores,
                               song_sums, tally, tally_calibration, tally_metrics)
from pipeline.models.cnn import build_run_model, song_pooling
from pipeline.models.lite import to_tflite
from pipeline.runtime.cluster import Limits, actor_pool
from pipeline.runtime.train_data import TrainingData
from pipeline.storage.bundle import Bundle
from pipeline.storage.shards import tensor_values

# validation songs the driver fits the sequence aggregator and the temperature on, at most
# (about: a hashed sample); the figures of all of them are tallied in the cluster
_SAMPLE_SONGS = 5000


class SongEvaluator:
    """Ray Data actor: the fit as a :class:`pipeline.song_model.SongModel` over whole songs:
    ``prepare`` (fn, kwargs) turns a batch into songs (:meth:`TrainingData.song_reads`); a
    row per song comes out (:func:`song_row_table`, or a song-level model's ``probs``)."""

    def __init__(self, bundle: Bundle, loop: dict, weights: list[np.ndarray],
                 lite_model: bytes | None, prepare: tuple):
        from pipeline.song_model import SongModel

        keras_model = _model(loop, weights) if lite_model is None else None
        self.model = SongModel(bundle, "mean", lite_model=lite_model, keras_model=keras_model,
                               from_audio=False)
        self.prepare = prepare

    def __call__(self, batch: pa.Table):
        read, kwargs = self.prepare
        songs = read(batch, **kwargs)
        if not len(songs["y"]):  # Ray Data cannot hold an empty tensor column
            return
        probs = self.model.probabilities(list(songs["x"]))
        if self.model.bundle.level == "song":
            yield {"song_id": songs["song_id"], "split": songs["split"], "y": songs["y"],
                   "probs": np.concatenate(probs)}
        else:
            yield song_row_table(songs, probs)


def _model(loop: dict, weights: list[np.ndarray]):
    from pipeline.models.keras import tf_keras

    tf_keras()
    model = build_run_model(loop)
    model.set_weights(weights)
    return model


def fit_bundle(data: TrainingData, loop: dict) -> Bundle:
    """The fit as a bundle not yet written: what :class:`pipeline.song_model.SongModel` reads
    of one (its classes, level and feature; the model normalises its own input)."""
    return Bundle(root="", model_id="", model=loop["model"], feature=data.source.column,
                  classes=tuple(data.classes), spec=data.source.spec,
                  mean=np.asarray(loop["normalization"][0], np.float32),
                  std=np.asarray(loop["normalization"][1], np.float32), level=data.level,
                  normalized_in_model=True)


def predict_songs(data: TrainingData, splits: tuple[str, ...], loop: dict,
                  weights: list[np.ndarray], lite_model: bytes | None, limits: Limits):
    """A dataset of a row per song of ``splits``, by :class:`SongEvaluator` actors:
    ``song_id``, ``split``, ``y``, and the frames' sums of :func:`song_row_table` (frame
    models) or ``probs`` [n_classes] (song-level models)."""
    # LiteRT actors are light (one CPU each); TensorFlow ones take ~1 GB: one per 2 CPUs, or
    # one per GPU
    gpu = loop["use_gpu"] and lite_model is None
    most = limits.gpus if gpu else limits.cpus if lite_model is not None else limits.cpus // 2
    songs, prepare = data.song_reads(*splits)
    return songs.map_batches(
        SongEvaluator, fn_constructor_kwargs={"bundle": fit_bundle(data, loop), "loop": loop,
                                              "weights": weights, "lite_model": lite_model,
                                              "prepare": prepare},
        batch_size=None, batch_format="pyarrow", num_gpus=1 if gpu else 0,
        compute=actor_pool(most, songs.num_blocks()))


def song_row_table(songs: dict, probs: list[np.ndarray]) -> pa.Table:
    """Songs (``song_id``, ``split``, ``y``) and their frame probabilities [n_frames,
    n_classes] each -> a row per song of :func:`pipeline.evaluate.song_sums` (``logodds``,
    its frames' log-odds in order, as a flat list)."""
    from ray.data.extensions import ArrowTensorArray

    n = np.array([len(p) for p in probs])
    sums = song_sums(np.repeat(songs["song_id"], n),
                     np.concatenate([np.arange(k) for k in n]), np.concatenate(probs),
                     np.repeat(songs["y"], n), split=np.repeat(songs["split"], n))
    out = {k: pa.array(sums[k]) for k in ("song_id", "split", "y", "frames", "correct")}
    for k in ("sum_probs", "sum_logodds", "votes"):
        out[k] = ArrowTensorArray.from_numpy(np.ascontiguousarray(sums[k]))
    out["logodds"] = pa.array([s.ravel() for s in sums["logodds"]], pa.list_(pa.float32()))
    return pa.table(out)


def evaluate_fit(data: TrainingData, fit: dict, limits: Limits) -> dict:
    """``fit`` with its ``model``, ``lite`` copy, ``sequence`` aggregator, ``metrics`` on the
    validation and test songs and those songs' rows (``songs``, materialized in the cluster)."""
    loop, n = fit["loop"], len(data.classes)
    model = _model(loop, fit["best"])
    lite = to_tflite(model) if data.level == "frame" else None  # what scoring on CPU will run
    splits = tuple(s for s in ("valid", "test") if data.examples(s))
    songs = predict_songs(data, splits, loop, fit["best"], lite, limits).materialize()
    scored = song_pooling(loop["model"]) if data.level == "song" else "mean"
    sample = _validation_sample(songs, data)
    # the learned aggregator, on out-of-sample frame predictions: fitted on validation songs,
    # measured on the test songs only
    sequence = None
    if data.level == "frame" and len(sample["y"]):
        from pipeline.models.sequence import fit_sequence

        sequence = fit_sequence(sample["logodds"], sample["y"], n, seed=loop["seed"],
                                logodds=True)
    calibration = fitted_temperature(sample["probs"], sample["y"], scored, "valid")
    tallies = song_tallies(songs, n, scored, calibration["temperature"], sequence)
    metrics = {**_run_figures(fit), "classes": list(data.classes), "test": None,
               **{split: tally_metrics(t, list(data.classes)) for split, t in tallies.items()},
               "calibration": {**calibration, **{split: tally_calibration(t)
                                                 for split, t in tallies.items()}}}
    return {**fit, "model": model, "lite": lite, "sequence": sequence, "metrics": metrics,
            "songs": songs}


def _run_figures(fit: dict) -> dict:
    """What metrics.json shows of the Ray Train run: epochs, early stopping, workers."""
    loop, state, feeds = fit["loop"], fit["state"], fit["feeds"]
    return {"epochs_run": state["epoch"], "stopped_early": state["stopped_early"],
            "best_val_loss": state["best_val_loss"], "class_weights": loop["class_weights"],
            "workers": {"count": loop["num_workers"], "batch_per_worker": feeds["train"].batch,
                        "train_steps": feeds["train"].steps, "valid_steps": feeds["valid"].steps,
                        "onednn_custom_ops": state.get("onednn"), "threads": state.get("threads"),
                        "gpus_seen": state.get("gpus_seen"), "resumed": state.get("resumed", 0)}}


def recalibrate(fit: dict, probs: np.ndarray, y: np.ndarray, fit_on: str) -> dict:
    """The fit's calibration refitted on other held-out songs (``fit_on``: cross-validation's
    out-of-fold songs, probs [n_songs, n_classes], y [n_songs]), with its figures on the
    validation and test songs again and on those songs."""
    scored = fit["metrics"]["calibration"]["aggregator"]
    calibration = fitted_temperature(probs, y, scored, fit_on)
    t = calibration["temperature"]
    tallies = song_tallies(fit["songs"], probs.shape[1], scored, t, None)
    tallies[fit_on] = tally({scored: probs}, y, scored=scored, temperature=t)
    return {**calibration, **{split: tally_calibration(v) for split, v in tallies.items()}}


def _validation_sample(songs, data: TrainingData) -> dict:
    """At most about ``_SAMPLE_SONGS`` validation songs (a deterministic sample by song_id),
    what the driver fits the temperature and the ``sequence`` aggregator on: their ``y``, the
    scored ``probs`` [songs, n_classes] and (frame models) each one's frame ``logodds``
    [frames, n_classes]."""
    share = min(1.0, _SAMPLE_SONGS / max(1, data.counts["valid"].songs))
    n = len(data.classes)
    columns = (["song_id", "y", "probs"] if data.level == "song"
               else ["song_id", "y", "frames", "sum_probs", "logodds"])
    rows = songs.map_batches(_sampled, batch_format="pyarrow", batch_size=None,
                             fn_kwargs={"split": "valid", "share": share})
    rows = sorted(rows.select_columns(columns).iter_rows(), key=lambda r: r["song_id"])
    y = np.array([r["y"] for r in rows], np.int64)
    if data.level == "song":
        return {"y": y, "probs": np.array([r["probs"] for r in rows]).reshape(-1, n)}
    return {"y": y, "probs": np.array([np.asarray(r["sum_probs"]) / r["frames"]
                                       for r in rows]).reshape(-1, n),
            "logodds": [np.asarray(r["logodds"], np.float32).reshape(-1, n) for r in rows]}


def _sampled(batch: pa.Table, *, split: str, share: float) -> pa.Table:
    """Ray Data fn: the songs of ``split``, a ``share`` of them by a hash of their song_id."""
    import zlib

    keep = [s == split and zlib.crc32(i.encode()) < share * 2**32
            for i, s in zip(batch.column("song_id").to_pylist(),
                            batch.column("split").to_pylist())]
    return batch.filter(pa.array(keep, pa.bool_()))


def song_tallies(songs, n_classes: int, scored: str, temperature: float,
                 sequence=None) -> dict[str, dict]:
    """Per split, the tally of its songs' figures (:func:`pipeline.evaluate.tally`), made
    block by block in the cluster: the driver merges a tally per block and split."""
    from pipeline.models.sequence import sequence_weights

    weights = sequence_weights(sequence) if sequence is not None else None
    tallied = songs.map_batches(_tally_block, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"n_classes": n_classes, "scored": scored,
                                           "temperature": temperature, "sequence": weights})
    out: dict[str, dict] = {}
    for row in tallied.iter_rows():
        out[row["split"]] = merge_tallies(out.get(row["split"]), pickle.loads(row["tally"]))
    return out


def _tally_block(batch: pa.Table, *, n_classes: int, scored: str, temperature: float,
                 sequence: dict | None) -> pa.Table:
    """Ray Data fn: song rows (of :func:`song_row_table`, or a song-level model's ``probs``)
    -> a row per split: its pickled :func:`pipeline.evaluate.tally` (the ``sequence``
    aggregator's classes for test songs, in numpy)."""
    from pipeline.models.sequence import gru_scores

    splits, tallies = [], []
    for split in sorted(set(batch.column("split").to_pylist())):
        rows = batch.filter(pc.equal(batch.column("split"), split))
        y = rows.column("y").to_numpy()
        if "probs" in rows.column_names:
            scores = {scored: tensor_values(rows.column("probs")).reshape(-1, n_classes)}
            t = tally(scores, y, scored=scored, temperature=temperature)
        else:
            sums = {k: tensor_values(rows.column(k)).reshape(-1, n_classes)
                    for k in ("sum_probs", "sum_logodds", "votes")}
            sums["frames"] = rows.column("frames").to_numpy()
            classes = None
            if split == "test" and sequence is not None:
                classes = gru_scores(sequence, [
                    np.asarray(v, np.float32).reshape(-1, n_classes)
                    for v in rows.column("logodds").to_pylist()]).argmax(axis=1)
            t = tally(song_scores(sums), y, scored=scored, temperature=temperature,
                      frames=sums["frames"], correct=rows.column("correct").to_numpy(),
                      sequence=classes)
        splits.append(split)
        tallies.append(pickle.dumps(t))
    return pa.table({"split": pa.array(splits, pa.string()),
                     "tally": pa.array(tallies, pa.binary())})


def head_figures(fit: dict) -> dict:
    """What metrics.json shows of each head: its song accuracies and loss."""
    m = fit["metrics"]
    return {"valid_song_accuracy": m["valid"]["song_accuracy"],
            "test_song_accuracy": (m["test"] or {}).get("song_accuracy"),
            "valid_song_log_loss": m["valid"]["song_log_loss"],
            "valid_song_log_loss_se": m["valid"]["song_log_loss_se"],
            "test_song_log_loss": (m["test"] or {}).get("song_log_loss"),
            "best_val_loss": m["best_val_loss"], "epochs_run": m["epochs_run"]}


def baseline(heads: dict, kept: str) -> dict:
    """The logistic head's song accuracies (as scored) beside the kept head's, per split."""
    out = {"head": "logistic"}
    for split in ("valid", "test"):
        key = f"{split}_song_accuracy"
        if heads["logistic"].get(key) and heads[kept].get(key):
            base = scored_accuracy(heads["logistic"][key])
            out[split] = {"baseline": base, "kept": scored_accuracy(heads[kept][key]),
                          "margin": scored_accuracy(heads[kept][key]) - base}
    return out
