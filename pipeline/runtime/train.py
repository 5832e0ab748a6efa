"""Training on Ray Train: a thin per-worker loop around the pure Keras builders.

The driver plans (:mod:`pipeline.runtime.train_data`): it aggregates the classes, the split
sizes and the per-band statistics of the train frames in the cluster, and hands Ray Train one
streaming dataset per split, read from the committed feature parts. Each worker builds the
model (normalising its own input; under ``MultiWorkerMirroredStrategy`` when there are several
workers), fits one epoch at a time on its shard, and reports a checkpoint (current and best
weights) every epoch. Actors then predict the validation and test splits with the best
weights, and their frames are summed per song in the cluster: only a row per validation and
test song comes back to the driver for the song metrics, and the frame log-odds of at most
``_SEQUENCE_SONGS`` validation songs for the ``sequence`` aggregator, whose class for each
test song is computed in the cluster too (in numpy), before the driver writes the bundle.

No replica ever gets an empty batch: each worker feeds its own replica whole batches of its
equal shard (:func:`worker_feed`). Keras' own rebatching of a worker's dataset split a last
partial batch of fewer rows than workers into empty pieces, and TensorFlow's oneDNN Conv2D
(on by default on CPUs with AVX512-VNNI/BF16, AVX-VNNI or AMX) answers an empty batch with a
tensor of its input's shape, which failed the next convolution.

A run is named after its output, settings and data: started again after a worker, node or
driver death, it resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ParameterError
from pipeline.evaluate import (MIN_CALIBRATION_SONGS, calibrate, evaluate_songs, evaluate_sums,
                               scored_accuracy, simplest_within_one_se, song_sums)
from pipeline.models.cnn import (HEADS, build_run_model, model_level, pooled_l2,
                                 song_pooling)
from pipeline.models.keras import load_tensorflow_quietly
from pipeline.models.lite import to_tflite
from pipeline.runtime.catalog import latest_per_song, partitions
from pipeline.runtime.cluster import (Bounds, Limits, actor_pool, connect, gpus_seen_here,
                                      plan_size, wait_for)
from pipeline.runtime.crossval import cross_validate, cv_folds
from pipeline.runtime.session import runtime_env, verbose
from pipeline.runtime.train_data import (TrainingData, open_source, plan_training_data,
                                         song_stats)
from pipeline.storage import fs as fsio
from pipeline.storage.bundle import save_bundle
from pipeline.storage.shards import tensor_values

log = logging.getLogger(__name__)

_PREFETCH = 8  # batches a worker's input pipeline holds ready for the next steps
_MAX_FAILURES = 3  # worker-group restarts (from the last checkpoint) before a run fails
_CACHE_FRACTION = 0.25  # of the object store: training frames up to this are read once
_SEQUENCE_SONGS = 5000  # validation songs the sequence aggregator is fitted on, at most
# Settings a run may change when it resumes; every other one is part of the run's identity.
_RESUMABLE = ("epochs", "patience", "num_workers", "use_gpu", "cv_folds")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train; recorded in the bundle's config.json.

    ``batch_size`` counts frames for frame models and songs (bags) for ``mil``, per optimizer
    step over all workers (each worker takes ``ceil(batch_size / num_workers)``);
    ``bag_frames`` caps a ``mil`` bag (frames drawn anew per song every epoch). The
    ``frame_table`` fields describe a user's own per-frame feature table (``--frame-table``);
    ``splits`` is then an optional manifest whose ``split``/``artist`` columns are joined on
    the song name. ``valid_fraction`` is the share of songs held out for validation (of the
    train songs when the manifest names no validation song; see :mod:`pipeline.splits`).
    """

    model: str = "cnn2d"
    split: str = "auto"
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 6
    num_workers: int = 1
    use_gpu: bool = False
    seed: int = 0
    bag_frames: int = 16
    frame_table: bool = False
    name_column: str = "filename"
    song_pattern: str = r"^(.+)\.\d+\.\w+$"
    label_column: str = "label"
    splits: str | None = None
    valid_fraction: float = 0.15
    head: str | None = None  # embed: "auto" (chosen by CV or on validation) or one of HEADS
    cv_folds: int | None = None  # head "auto": folds to choose by (None: 5 for <= 1,000 songs)
    class_weights: str = "balanced"  # or "none"
    feature: str | None = None  # embed: the musicnn column (default embedding)


@dataclasses.dataclass(frozen=True)
class Feed:
    """What each worker feeds its replica per epoch: ``steps`` batches of ``batch`` rows."""

    batch: int
    steps: int


def worker_feed(rows: int, workers: int, batch_size: int, *, drop_last: bool, split: str,
                unit: str) -> Feed:
    """Per-worker batches of one split, the same number on every worker, none empty.

    Ray Train streams each of ``workers`` exactly ``rows // workers`` rows (it drops the
    remainder to keep the shards equal). ``batch_size`` is the global batch of one optimizer
    step, so a worker's batch is ``ceil(batch_size / workers)`` rows. Training drops a
    worker's last partial batch (``drop_last``; the shuffle varies which rows); validation
    keeps it, and it is never empty because every worker holds at least one row.
    """
    per_worker = rows // workers
    batch = -(-batch_size // workers)
    steps = per_worker // batch if drop_last else -(-per_worker // batch)
    if steps == 0 and drop_last:
        raise ParameterError(f"the {split} split has {rows} {unit}: {workers} workers x {batch} "
                             f"a batch need at least {workers * batch}; lower --batch-size or "
                             f"--num-workers")
    if steps == 0:
        raise ParameterError(f"the {split} split has {rows} {unit}, fewer than the {workers} "
                             f"workers; lower --num-workers or give it more songs")
    return Feed(batch=batch, steps=steps)


def train_loop_per_worker(loop: dict) -> None:
    """Ray Train worker: build under the strategy, fit epoch by epoch, report checkpoints."""
    import ray.train

    from pipeline.models.keras import tf_keras

    keras = tf_keras()
    import tensorflow as tf

    tf.get_logger().setLevel("WARNING")  # MWMS logs every collective at INFO
    tf.config.threading.set_intra_op_parallelism_threads(worker_threads())
    tf.keras.utils.set_random_seed(loop["seed"])
    gpus = gpus_seen_here("train --use-gpu") if loop["use_gpu"] else 0
    # One worker has nothing to all-reduce: the default strategy runs its epochs ~25 % faster
    # (measured 40 s against 54-82 s) than MultiWorkerMirroredStrategy's collectives would.
    strategy = (tf.distribute.MultiWorkerMirroredStrategy() if loop["num_workers"] > 1
                else tf.distribute.get_strategy())
    with strategy.scope():
        model = build_run_model(loop)
        model.compile(optimizer=keras.optimizers.Adam(loop["learning_rate"]),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    state, best_weights = _restore(model)
    feeds = {split: _ReplicaFeed(strategy, ray.train.get_dataset_shard(split),
                                 Feed(**loop[f"{split}_feed"]), loop)
             for split in ("train", "valid")}
    for epoch in range(state["epoch"], loop["epochs"]):
        epoch_started = time.perf_counter()
        fitted = model.fit(feeds["train"].epoch(loop["seed"] + epoch),
                           validation_data=feeds["valid"].epoch(), epochs=1, verbose=0,
                           steps_per_epoch=feeds["train"].feed.steps,
                           validation_steps=feeds["valid"].feed.steps)
        row = {"epoch": epoch + 1, **{k: float(v[-1]) for k, v in fitted.history.items()},
               "seconds": time.perf_counter() - epoch_started}
        state["history"].append(row)
        state["epoch"] = epoch + 1
        # Validation metrics are all-reduced across workers, so every worker takes the same
        # early-stopping decision (a lone worker stopping would hang the others' collectives).
        # Every worker reads the weights: BatchNorm statistics are sync-on-read variables, and
        # reading them is an all-reduce that hangs unless all workers take part.
        current_weights = model.get_weights()
        if row["val_loss"] < state["best_val_loss"] - 1e-4:
            state["best_val_loss"], state["wait"] = row["val_loss"], 0
            best_weights = current_weights
        else:
            state["wait"] += 1
        stop = state["wait"] >= loop["patience"]
        _report(row, {**state, "stopped_early": stop, "gpus_seen": gpus}, current_weights,
                best_weights)
        if stop:
            break


def _restore(model) -> tuple[dict, list | None]:
    """A fresh run's state, or a restarted run's (worker, node or driver death): its last
    epoch's state and weights, set on ``model``, and its best weights."""
    import ray.train

    state = {"epoch": 0, "best_val_loss": float("inf"), "wait": 0, "history": [], "resumed": 0}
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return state, None
    with checkpoint.as_directory() as folder:
        state = json.load(open(os.path.join(folder, "state.json")))
        model.set_weights(_load_weights(os.path.join(folder, "current.npz")))
        best_weights = _load_weights(os.path.join(folder, "best.npz"))
    state["resumed"] = state.get("resumed", 0) + 1
    return state, best_weights


def _report(row: dict, state: dict, current: list, best: list) -> None:
    """Report an epoch to Ray Train, with a checkpoint from the first worker: its current and
    best weights and ``state``."""
    import ray.train

    from pipeline.models.keras import onednn_enabled

    with tempfile.TemporaryDirectory() as folder:
        ckpt = None
        if ray.train.get_context().get_world_rank() == 0:
            _save_weights(os.path.join(folder, "current.npz"), current)
            _save_weights(os.path.join(folder, "best.npz"), best)
            with open(os.path.join(folder, "state.json"), "w") as f:
                json.dump({**state, "onednn": onednn_enabled(), "threads": worker_threads()}, f)
            ckpt = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({**row, "best_val_loss": state["best_val_loss"]}, checkpoint=ckpt)


class _ReplicaFeed:
    """A Train worker's shard of one split as its replica's tf.data input, once per epoch.

    The worker's own shard in whole batches for its replica: Keras neither rebatches nor pads
    it, so no replica gets an empty batch (see the module docstring). Ray hands over whole
    blocks; tf.data splits them into rows, shuffles them in its buffer and batches them in
    C++ (Ray's local shuffle buffer in Python took half a core at full feed rate, against a
    quarter now). Prefetching overlaps the feed with the step running in TensorFlow's threads.
    """

    def __init__(self, strategy, shard, feed: Feed, loop: dict):
        import tensorflow as tf

        self.strategy, self.shard, self.feed = strategy, shard, feed
        self.inputs = loop["inputs"] if len(loop["inputs"]) > 1 else loop["inputs"][0]
        self.shuffle_rows, self.weights = loop["shuffle_rows"], loop["class_weights"]
        # tf.data's autotuning thread sleeps between rounds, and deleting an iterator (Keras
        # does at the end of the training and of the validation of every epoch) waits until
        # it wakes: 1 epoch in 3 sat idle for 30 s (gdb: ~IteratorResource waiting on
        # Model::OptimizeLoop). The fixed prefetch buffer needs no tuning.
        self.options = tf.data.Options()
        self.options.autotune.enabled = False

    def epoch(self, seed: int | None = None):
        """The next epoch's batches: for training (``seed`` given), shuffled with ``seed``,
        the last partial batch dropped and each example weighted by its class's weight."""
        import tensorflow as tf

        def rows(_):
            data = self.shard.to_tf(self.inputs, "y", batch_size=None,
                                    prefetch_batches=2).unbatch()
            if seed is not None and self.shuffle_rows:
                data = data.shuffle(self.shuffle_rows, seed=seed)
            data = data.batch(self.feed.batch, drop_remainder=seed is not None)
            if seed is not None and self.weights:
                weights = tf.constant(self.weights)
                data = data.map(lambda x, y: (x, y, tf.gather(weights, y)))
            return data.prefetch(_PREFETCH).with_options(self.options)

        return self.strategy.distribute_datasets_from_function(rows)


def worker_threads() -> int:
    """TensorFlow's intra-op threads for this Train worker: the node's CPUs shared by the
    workers on it.

    Ray sets ``OMP_NUM_THREADS`` to a worker's reserved CPUs (1 here), and TensorFlow with
    oneDNN's custom ops sizes its intra-op pool from it: an epoch then ran on one core of
    two, 2.1x slower than the same fit outside Ray. The reservation is for scheduling (one
    CPU is left to Ray Data); the arithmetic may use every core.
    """
    import ray.train

    return max(1, len(os.sched_getaffinity(0)) // ray.train.get_context().get_local_world_size())


def _save_weights(path: str, weights: list[np.ndarray]) -> None:
    np.savez(path, *weights)


def _load_weights(path: str) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


class Predictor:
    """Ray Data actor: the trained model over one split's rows, in LiteRT (``lite_model``, as
    scoring runs frame models on CPU: no TensorFlow in the actor) or rebuilt in Keras."""

    def __init__(self, loop: dict, weights: list[np.ndarray], inputs: list[str],
                 lite_model: bytes | None = None):
        if lite_model is not None:
            from pipeline.models.lite import LiteModel

            self.predict = LiteModel(lite_model, threads=1).predict
        else:
            self.predict = functools.partial(_model(loop, weights).predict, batch_size=64,
                                             verbose=0)
        self.inputs = inputs

    def __call__(self, batch: dict) -> dict:
        x = [batch[name] for name in self.inputs]
        keys = {k: batch[k] for k in ("song_id", "split", "y", "frame") if k in batch}
        return {**keys, "probs": self.predict(x if len(x) > 1 else x[0])}


def _model(loop: dict, weights: list[np.ndarray]):
    from pipeline.models.keras import tf_keras

    tf_keras()
    model = build_run_model(loop)
    model.set_weights(weights)
    return model


def predict(data: TrainingData, splits: tuple[str, ...], loop: dict, weights: list[np.ndarray],
            lite_model: bytes | None, limits: Limits):
    """A dataset of the model's predictions over the rows of ``splits``, by actors:
    ``song_id``, ``split``, ``y``, ``probs`` [n_classes], and ``frame`` for frame rows (songs
    for bags)."""
    # LiteRT actors are light (one CPU each); TensorFlow ones take ~1 GB: one per 2 CPUs, or
    # one per GPU
    gpu = loop["use_gpu"] and lite_model is None
    most = limits.gpus if gpu else limits.cpus if lite_model is not None else limits.cpus // 2
    return data.dataset(*splits).map_batches(
        Predictor, fn_constructor_kwargs={"loop": loop, "weights": weights,
                                          "inputs": data.inputs, "lite_model": lite_model},
        batch_size=64, num_gpus=1 if gpu else 0,
        compute=actor_pool(most, data.source.part_count() if data.source.root else most))


def song_results(data: TrainingData, predicted, limits: Limits):
    """Frame predictions -> one row per song (its frames' sums: :func:`song_rows`), made in
    the cluster: the frames are hash-partitioned by song, each block then holds whole
    songs. Materialized."""
    frames = sum(data.counts[s].frames for s in ("valid", "test"))
    return latest_per_song(predicted, song_rows,
                           partitions=partitions(frames, plan_size(limits))).materialize()


def song_rows(batch: pa.Table) -> pa.Table:
    """Ray Data fn: frame predictions of whole songs -> a row per song of
    :func:`pipeline.evaluate.song_sums` (``logodds``, its frames' log-odds in order, as a flat
    list)."""
    from ray.data.extensions import ArrowTensorArray

    probs = tensor_values(batch.column("probs"))
    sums = song_sums(batch.column("song_id").to_numpy(zero_copy_only=False),
                     batch.column("frame").to_numpy(zero_copy_only=False), probs,
                     batch.column("y").to_numpy(zero_copy_only=False),
                     split=batch.column("split").to_numpy(zero_copy_only=False))
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


def run_identity(out: str, config: TrainConfig, data_fingerprint: str) -> tuple[str, dict]:
    """(default run name, identity): the name is stable for the same output, settings and
    data, so a restarted job finds its run; settings in ``_RESUMABLE`` may change.

    The normalisation is not part of it: it follows from the data and the split, but the
    cluster combines its blocks in any order, so its last bits vary from run to run (a
    resumed run builds its model with statistics equal to ~1e-15).
    """
    identity = {k: v for k, v in dataclasses.asdict(config).items() if k not in _RESUMABLE}
    identity["data"] = data_fingerprint
    digest = hashlib.sha256(json.dumps([str(out).rstrip("/"), identity], sort_keys=True).encode())
    return f"genres-train-{config.model}-{digest.hexdigest()[:16]}", identity


def _claim_run(storage_path: str, name: str, identity: dict) -> None:
    """Record the run's identity beside its checkpoints, refusing a run of other settings or
    data (a reused --run-name)."""
    marker = fsio.join(storage_path, name, "genres-run.json")
    if fsio.exists(marker):
        old = json.loads(fsio.read_text(marker))
        changed = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        if changed:
            raise ParameterError(f"run {name} in {storage_path} was started with other "
                                 f"{', '.join(changed)}; choose another --run-name or delete "
                                 f"{fsio.join(storage_path, name)}")
        log.info("train: resuming run %s", name)
        return
    fsio.write_bytes_atomic(marker, json.dumps(identity, indent=2, sort_keys=True).encode())


def run_train(features: str, out: str, config: TrainConfig, *, address: str | None = None,
              storage_path: str | None = None, run_name: str | None = None,
              bounds: Bounds = Bounds()) -> dict:
    """Train ``config.model`` on a feature directory (or frame table) and write the bundle.
    With ``--model embed --head auto``, every head is fitted and the simplest within one
    standard error of the best song log-loss is kept (:func:`_choose_head`); the others'
    figures stay in the metrics. ``bounds``: the most of the cluster the run may use (Train's
    workers are waited for, up to ``bounds.wait_s``)."""
    from ray.train.constants import DEFAULT_STORAGE_PATH

    started = time.perf_counter()
    if config.frame_table and config.model != "dnn":
        raise ParameterError(f"--frame-table rows are feature vectors; train them with "
                             f"--model dnn, not {config.model}")
    heads = _heads(config)
    source = open_source(features, config)
    fsio.check_ours(out, "bundle.json", "a model bundle")  # before the work, not after it
    # before ray.train.tensorflow imports TensorFlow in this process: tf-keras, its notes quiet
    load_tensorflow_quietly()
    limits = connect(address, bounds, stage="train",
                     gpus=config.num_workers if config.use_gpu else 0)
    data = plan_training_data(dataclasses.replace(source, cpus=plan_size(limits)), config)
    fits = []
    for head in heads:  # the pooled head takes songs where the others take patches
        at_level = dataclasses.replace(data, level=model_level(config.model, head))
        fit = _fit(at_level, dataclasses.replace(config, head=head), out,
                   storage_path=storage_path or DEFAULT_STORAGE_PATH, limits=limits,
                   wait_s=bounds.wait_s,
                   run_name=f"{run_name}-{head}" if run_name and len(heads) > 1 else run_name)
        fits.append(_evaluate(at_level, fit, limits))
    chosen, metrics = _kept(data, fits, config, limits)
    model_id = _write_bundle(out, chosen, metrics, data, config, features)
    return {"model": config.model, "model_id": model_id, "out": out, "metrics": metrics,
            "epochs": chosen["state"]["epoch"], "seconds": time.perf_counter() - started,
            "run": chosen["run"], "head": chosen["head"], "limits": limits.describe(),
            "train_songs": data.counts["train"].songs, "valid_songs": data.counts["valid"].songs}


def _kept(data: TrainingData, fits: list[dict], config: TrainConfig,
          limits: Limits) -> tuple[dict, dict]:
    """The fit to keep and its metrics: with the other heads' figures, how the head was
    chosen, the logistic baseline beside it, and its calibration (from the cross-validation's
    out-of-fold songs where it ran)."""
    kept, selection = _choose_head(data, fits, config, limits)
    chosen = next(f for f in fits if f["head"] == kept)
    metrics = chosen["metrics"]
    held_out = selection.pop("held_out")
    # The validation songs, held out from training by artist, stand closest to new songs:
    # their temperature where there are enough of them (GTZAN-3's 61: test ECE 0.059 ->
    # 0.035), else one from the cross-validation's out-of-fold songs, not from 13-18 songs.
    if held_out is not None and data.counts["valid"].songs < MIN_CALIBRATION_SONGS:
        metrics["calibration"] = calibrate({**chosen["scored"], "cv": held_out},
                                           metrics["calibration"]["aggregator"], fit_on="cv")
    if config.model == "embed":
        cv = selection.pop("heads")  # each head's cross-validated figures, beside its others
        metrics["head"], metrics["selection"] = kept, selection
        metrics["heads"] = {f["head"]: {**_head_figures(f), **cv.get(f["head"], {})}
                            for f in fits}
        if "logistic" in metrics["heads"]:  # the linear baseline the kept head has to beat
            metrics["baseline"] = _baseline(metrics["heads"], kept)
    chosen["head_choice"] = selection["by"]
    return chosen, metrics


def _write_bundle(out: str, chosen: dict, metrics: dict, data: TrainingData,
                  config: TrainConfig, features: str) -> str:
    """The kept fit as a model bundle in ``out``; its model_id."""
    loop = chosen["loop"]
    return save_bundle(out, model=chosen["model"], lite_model=chosen["lite"],
                       model_name=config.model, feature=data.source.column,
                       classes=list(data.classes), spec=data.source.spec,
                       mean=np.asarray(loop["normalization"][0], np.float32),
                       std=np.asarray(loop["normalization"][1], np.float32),
                       config={**dataclasses.asdict(config), "head": chosen["head"],
                               "head_choice": chosen["head_choice"],
                               "features": features, "run": chosen["run"],
                               "split_method": data.method},
                       metrics=metrics, history=chosen["state"]["history"],
                       level=model_level(config.model, chosen["head"]),
                       pooling=song_pooling(config.model), sequence_model=chosen["sequence"],
                       calibration=metrics["calibration"])


def _heads(config: TrainConfig) -> list[str | None]:
    """The heads to fit: None for models without one, all for the embed model's ``auto``."""
    if config.cv_folds is not None and (config.cv_folds < 0 or config.cv_folds == 1):
        raise ParameterError(f"--cv-folds must be 0 (choose on the validation songs) or at "
                             f"least 2, not {config.cv_folds}")
    if config.model != "embed":
        if config.head not in (None, "auto"):
            raise ParameterError(f"--head is for --model embed, not {config.model}")
        return [None]
    if config.head in (None, "auto"):
        return list(HEADS)
    if config.head not in HEADS:
        raise ParameterError(f"unknown --head {config.head!r}; choose auto or one of {HEADS}")
    return [config.head]


def _choose_head(data: TrainingData, fits: list[dict], config: TrainConfig,
                 limits: Limits) -> tuple[str | None, dict]:
    """The head to keep, and how it was chosen: the simplest whose song log-loss is within
    one standard error of the best, by cross-validation over the train and validation songs
    where they are few (:mod:`pipeline.runtime.crossval`), else on the validation songs."""
    if len(fits) == 1:
        return fits[0]["head"], {"by": "given", "heads": {}, "held_out": None}
    songs = data.counts["train"].songs + data.counts["valid"].songs
    folds = cv_folds(config.cv_folds, fits, songs)
    started = time.perf_counter()
    if folds:
        figures = cross_validate(data, fits, folds, plan_size(limits))
        losses = {h: (f["song_log_loss"], f["song_log_loss_se"]) for h, f in figures.items()}
        by, songs = f"{folds}-fold cross-validation", figures[fits[0]["head"]]["songs"]
        heads = {h: {f"cv_{k}": v for k, v in f.items() if k not in ("probs", "y")}
                 for h, f in figures.items()}
    else:
        losses = {f["head"]: (f["metrics"]["valid"]["song_log_loss"],
                              f["metrics"]["valid"]["song_log_loss_se"]) for f in fits}
        by, songs, heads, figures = "validation", data.counts["valid"].songs, {}, {}
    kept = simplest_within_one_se(losses)
    log.info("train: heads' song log-loss by %s on %d songs (%.0f s): %s; kept %s (the simplest "
             "within one standard error of the best)", by, songs, time.perf_counter() - started,
             ", ".join(f"{h} {loss:.3f}±{se:.3f}" for h, (loss, se) in losses.items()), kept)
    held_out = (figures[kept]["probs"], figures[kept]["y"]) if kept in figures else None
    return kept, {"by": by, "songs": songs, "folds": folds, "heads": heads,
                  "held_out": held_out}


def _fit(data: TrainingData, config: TrainConfig, out: str, *, storage_path: str,
         run_name: str | None, limits: Limits, wait_s: float) -> dict:
    """One Ray Train run of ``config`` on ``data``: its ``run`` name, ``loop`` settings, last
    ``state`` and ``best`` weights. Its worker group is waited for first (up to ``wait_s``):
    Ray Train gives a group 60 s to be placed, less than an autoscaler takes to bring a
    node."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    unit = "songs" if data.level == "song" else "frames"
    feeds = {split: worker_feed(data.examples(split), config.num_workers, config.batch_size,
                                drop_last=split == "train", split=split, unit=unit)
             for split in ("train", "valid")}
    name, identity = run_identity(out, config, data.source.fingerprint)
    name = run_name or name
    _claim_run(storage_path, name, identity)
    log.info("train: %d classes, %s train/valid/test = %s; run %s", len(data.classes), unit,
             "/".join(str(data.examples(s)) for s in ("train", "valid", "test")), name)
    loop = _loop_settings(data, config, feeds)
    # Train workers leave one CPU of those the job may use to Ray Data, which reads and
    # prepares their batches: with every CPU reserved for training, the read tasks would never
    # be scheduled.
    worker = {"CPU": min(1.0, max(0.0, limits.cpus - 1) / config.num_workers)}
    if config.use_gpu:
        worker["GPU"] = 1
    wait_for([worker] * config.num_workers, purpose=f"train ({config.num_workers} worker(s))",
             timeout_s=wait_s, limits=limits)
    # Frames that fit in a quarter of the object store are read once, not every epoch: on 2
    # CPUs, reading and splitting the parts again cost each epoch a quarter more than plain
    # Keras (9,427 frames: 49.3 s against 38.4 s). A catalog's worth streams every epoch.
    # The object store of the nodes up after the wait above (the worker group's among them)
    # is what the cache can count on: a cluster that grows later only adds to it.
    cache = data.level == "frame" and data.input_bytes("train", "valid") <= _CACHE_FRACTION * \
        ray.cluster_resources().get("object_store_memory", 0)
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker=worker),
        run_config=_run_config(name, storage_path),
        datasets={"train": data.dataset("train", shuffle=True, cache=cache),
                  "valid": data.dataset("valid", cache=cache)})
    result = trainer.fit()
    if result.checkpoint is None:
        raise ParameterError(f"training produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as folder:
        state = json.load(open(os.path.join(folder, "state.json")))
        best = _load_weights(os.path.join(folder, "best.npz"))
    return {"head": config.head, "run": name, "loop": loop, "state": state, "best": best,
            "feeds": feeds}


def _loop_settings(data: TrainingData, config: TrainConfig, feeds: dict[str, Feed]) -> dict:
    """What every Train worker (and fold task) builds and feeds its model with: the config,
    the input shape, the classes, the normalisation, the head's options, the shuffle buffer,
    the class weights and each split's feed."""
    return {**dataclasses.asdict(config), "input_shape": list(data.source.shape),
            "n_classes": len(data.classes), "inputs": data.inputs,
            "normalization": [data.stats.mean.tolist(), data.stats.scale().tolist()],
            "head_options": _head_options(data, config),
            "shuffle_rows": data.shuffle_rows(feeds["train"].batch),
            "class_weights": data.class_weights() if config.class_weights == "balanced" else None,
            **{f"{split}_feed": dataclasses.asdict(feed) for split, feed in feeds.items()}}


def _run_config(name: str, storage_path: str):
    """Ray Train's RunConfig of a run: its name and storage (what a restart resumes from),
    one checkpoint kept, bounded restarts, the workers' env, its own progress lines only."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig

    return RunConfig(
        name=name, storage_path=storage_path,
        checkpoint_config=CheckpointConfig(num_to_keep=1),
        failure_config=FailureConfig(max_failures=_MAX_FAILURES,
                                     controller_failure_limit=_MAX_FAILURES,
                                     max_preemption_failures=_MAX_FAILURES),
        worker_runtime_env=runtime_env(),
        # its per-epoch "Reporting training result" lines: the run logs its own progress
        logging_config=LoggingConfig(log_level="INFO" if verbose() else "WARNING"))


def _head_options(data: TrainingData, config: TrainConfig) -> dict:
    """The pooled head's settings: the statistics of the train songs' pooled vectors (a pass
    over them in the cluster) and an L2 weight for their number."""
    if config.head != "pooled":
        return {}
    stats = song_stats(data)
    return {"song_normalization": [stats.mean.tolist(), stats.scale().tolist()],
            "pooled_l2": pooled_l2(data.counts["train"].songs)}


def _evaluate(data: TrainingData, fit: dict, limits: Limits) -> dict:
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
    predicted = predict(data, splits, loop, fit["best"], lite, limits)
    sequence = None
    if data.level == "song":  # a row per song already: its probabilities
        aggregator, scored = song_pooling(loop["model"]), {}
        for split, got in _collect(predicted, ["probs", "y"], splits).items():
            scored[split] = (got["probs"].reshape(-1, len(classes)), got["y"])
            metrics[split] = evaluate_songs(*scored[split], classes, aggregator)
        metrics["calibration"] = calibrate(scored, aggregator)
        return {**fit, "model": model, "lite": lite, "sequence": None, "metrics": metrics,
                "scored": scored}
    songs = song_results(data, predicted, limits)
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


def _head_figures(fit: dict) -> dict:
    """What metrics.json shows of each head: its song accuracies and loss."""
    m = fit["metrics"]
    return {"valid_song_accuracy": m["valid"]["song_accuracy"],
            "test_song_accuracy": (m["test"] or {}).get("song_accuracy"),
            "valid_song_log_loss": m["valid"]["song_log_loss"],
            "valid_song_log_loss_se": m["valid"]["song_log_loss_se"],
            "test_song_log_loss": (m["test"] or {}).get("song_log_loss"),
            "best_val_loss": m["best_val_loss"], "epochs_run": m["epochs_run"]}


def _baseline(heads: dict, kept: str) -> dict:
    """The logistic head's song accuracies (as scored) beside the kept head's, per split."""
    out = {"head": "logistic"}
    for split in ("valid", "test"):
        key = f"{split}_song_accuracy"
        if heads["logistic"].get(key) and heads[kept].get(key):
            base = scored_accuracy(heads["logistic"][key])
            out[split] = {"baseline": base, "kept": scored_accuracy(heads[kept][key]),
                          "margin": scored_accuracy(heads[kept][key]) - base}
    return out
