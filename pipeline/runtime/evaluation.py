"""A fit's evaluation by song, in the cluster, as scoring runs its bundle.

Actors open the fit as a :class:`pipeline.song_model.SongModel` (in LiteRT for frame models,
as scoring runs them on CPU) over whole songs of the validation and test splits, read from
the feature parts in the actor as scoring reads a feature directory, and turn each song into
one row: its frames' sums (every aggregator's scores follow from them), or a song-level
model's probabilities. Only those rows come back to the driver for the song metrics, and the
frame log-odds of at most ``_SEQUENCE_SONGS`` validation songs for the ``sequence``
aggregator, whose class for each test song is computed in the cluster too (in numpy).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.evaluate import (calibrate, evaluate_songs, evaluate_sums, scored_accuracy,
                               song_sums)
from pipeline.models.cnn import build_run_model, song_pooling
from pipeline.models.lite import to_tflite
from pipeline.runtime.cluster import Limits, actor_pool
from pipeline.runtime.train_data import TrainingData
from pipeline.storage.bundle import Bundle

_SEQUENCE_SONGS = 5000  # validation songs the sequence aggregator is fitted on, at most


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


def _collect(songs, columns: list[str], splits: tuple[str, ...]) -> dict[str, dict]:
    """Per split, the per-song ``columns`` of ``songs`` (a dataset with ``split``) as arrays:
    the validation and test songs' results, all the driver holds of them."""
    parts: dict = {split: {k: [] for k in columns} for split in splits}
    for batch in songs.select_columns(["split", *columns]).iter_batches(
            batch_size=None, batch_format="numpy"):
        for split in splits:
            chosen = batch["split"] == split
            for k in columns:
                parts[split][k].append(batch[k][chosen])
    return {split: {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
            for split, cols in parts.items()}


def _sequence(data: TrainingData, songs, loop: dict, n_classes: int):
    """The learned ``sequence`` aggregator, fitted on at most ``_SEQUENCE_SONGS`` validation
    songs (a deterministic sample by song_id; it has ~2k weights), and its class for each test
    song, computed in the cluster: (the Keras model, {song_id: class})."""
    from pipeline.models.sequence import fit_sequence, sequence_weights

    share = min(1.0, _SEQUENCE_SONGS / max(1, data.counts["valid"].songs))
    fit = songs.map_batches(_sampled, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"split": "valid", "share": share})
    rows = sorted(fit.select_columns(["song_id", "y", "logodds"]).iter_rows(),
                  key=lambda r: r["song_id"])
    if not rows:
        return None, {}
    model = fit_sequence([np.asarray(r["logodds"], np.float32).reshape(-1, n_classes)
                          for r in rows], np.array([r["y"] for r in rows]), n_classes,
                         seed=loop["seed"], logodds=True)
    test = songs.map_batches(_sequence_classes, batch_format="pyarrow", batch_size=None,
                             fn_kwargs={"weights": sequence_weights(model),
                                        "n_classes": n_classes})
    classes = {}
    for batch in test.iter_batches(batch_size=None, batch_format="numpy"):
        classes.update(zip(batch["song_id"], batch["pred"]))
    return model, classes


def _sampled(batch: pa.Table, *, split: str, share: float) -> pa.Table:
    """Ray Data fn: the songs of ``split``, a ``share`` of them by a hash of their song_id."""
    import zlib

    keep = [s == split and zlib.crc32(i.encode()) < share * 2**32
            for i, s in zip(batch.column("song_id").to_pylist(),
                            batch.column("split").to_pylist())]
    return batch.filter(pa.array(keep, pa.bool_()))


def _sequence_classes(batch: pa.Table, *, weights: dict, n_classes: int) -> pa.Table:
    """Ray Data fn: the test songs' class by the ``sequence`` aggregator (numpy, no
    TensorFlow)."""
    from pipeline.models.sequence import gru_scores

    test = batch.filter(pc.equal(batch.column("split"), "test"))
    if not test.num_rows:
        return pa.table({"song_id": pa.array([], pa.string()), "pred": pa.array([], pa.int64())})
    sequences = [np.asarray(v, np.float32).reshape(-1, n_classes)
                 for v in test.column("logodds").to_pylist()]
    return pa.table({"song_id": test.column("song_id"),
                     "pred": gru_scores(weights, sequences).argmax(axis=1)})


def evaluate_fit(data: TrainingData, fit: dict, limits: Limits) -> dict:
    """``fit`` with its ``model``, ``lite`` copy, ``sequence`` aggregator and ``metrics`` on
    the validation and test songs (predicted in the cluster)."""
    loop, state, feeds = fit["loop"], fit["state"], fit["feeds"]
    classes = list(data.classes)
    metrics = {"classes": classes, "epochs_run": state["epoch"],
               "stopped_early": state["stopped_early"],
               "best_val_loss": state["best_val_loss"], "test": None,
               "class_weights": loop["class_weights"],
               "workers": {"count": loop["num_workers"], "batch_per_worker": feeds["train"].batch,
                           "train_steps": feeds["train"].steps,
                           "valid_steps": feeds["valid"].steps,
                           "onednn_custom_ops": state.get("onednn"),
                           "threads": state.get("threads"),
                           "gpus_seen": state.get("gpus_seen"),
                           "resumed": state.get("resumed", 0)}}
    model = _model(loop, fit["best"])
    lite = to_tflite(model) if data.level == "frame" else None  # what scoring on CPU will run
    splits = tuple(s for s in ("valid", "test") if data.examples(s))
    songs = predict_songs(data, splits, loop, fit["best"], lite, limits).materialize()
    if data.level == "song":  # a row per song already: its probabilities
        aggregator, scored = song_pooling(loop["model"]), {}
        for split, got in _collect(songs, ["probs", "y"], splits).items():
            scored[split] = (got["probs"].reshape(-1, len(classes)), got["y"])
            metrics[split] = evaluate_songs(*scored[split], classes, aggregator)
        metrics["calibration"] = calibrate(scored, aggregator)
        return {**fit, "model": model, "lite": lite, "sequence": None, "metrics": metrics,
                "scored": scored}
    # the learned aggregator, on out-of-sample frame predictions: fitted on the validation
    # songs, measured on the test songs only
    sequence, test_classes = _sequence(data, songs, loop, len(classes))
    columns = ["song_id", "y", "frames", "correct", "sum_probs", "sum_logodds", "votes"]
    scored = {}
    for split, got in _collect(songs, columns, splits).items():
        chosen = None
        if split == "test" and sequence is not None:
            chosen = np.array([test_classes[s] for s in got["song_id"]], np.int64)
        metrics[split] = evaluate_sums(got, classes, sequence=chosen)
        # the mean aggregator's song probabilities: what scoring gives by default
        scored[split] = (got["sum_probs"].reshape(-1, len(classes))
                         / np.asarray(got["frames"], np.float64)[:, None], got["y"])
    metrics["calibration"] = calibrate(scored, "mean")
    return {**fit, "model": model, "lite": lite, "sequence": sequence, "metrics": metrics,
            "scored": scored}


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
