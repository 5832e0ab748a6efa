"""Training on Ray Train: a thin per-worker loop around the pure Keras builders.

The driver reads the committed feature rows, splits songs, fits the normalisation on train
songs only, and hands Ray Datasets to a ``TensorflowTrainer``. Each worker builds the model
under ``MultiWorkerMirroredStrategy``, fits one epoch at a time on its dataset shard, and
reports a checkpoint (current and best weights) every epoch. The driver then evaluates the
best weights on the test songs and writes the bundle.

No replica ever gets an empty batch: each worker feeds its own replica whole batches of its
equal shard (:func:`worker_feed`). Keras' own rebatching of a worker's dataset split a last
partial batch of fewer rows than workers into empty pieces, and TensorFlow's oneDNN Conv2D
(on by default on CPUs with AVX512-VNNI/BF16, AVX-VNNI or AMX) answers an empty batch with a
tensor of its input's shape, which failed the next convolution.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time

import numpy as np
import pyarrow as pa

from pipeline.errors import ParameterError
from pipeline.features.bags import group_by_song, make_bags
from pipeline.evaluate import evaluate, evaluate_songs
from pipeline.models.cnn import build_model, feature_column, model_level
from pipeline.runtime.session import init_ray, runtime_env
from pipeline.splits import assign_splits
from pipeline.storage.bundle import save_bundle
from pipeline.storage.shards import FeatureStore, tensor_values

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train; recorded in the bundle's config.json.

    ``batch_size`` counts frames for frame models and songs (bags) for ``mil``, per optimizer
    step over all workers (each worker takes ``ceil(batch_size / num_workers)``). The
    ``frame_table`` fields describe a user's own per-frame feature table (``--frame-table``);
    ``splits`` is then an optional manifest whose ``split``/``artist`` columns are joined on
    the song name.
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
    frame_table: bool = False
    name_column: str = "filename"
    song_pattern: str = r"^(.+)\.\d+\.\w+$"
    label_column: str = "label"
    splits: str | None = None


@dataclasses.dataclass
class Rows:
    """Feature rows before splitting: x [n_frames, ...] with each row's song_id and label."""

    spec: object
    column: str
    x: np.ndarray
    song_ids: np.ndarray
    labels: np.ndarray  # None where unlabelled
    meta: dict  # song_id -> {"split": str|None, "artist": str|None}


@dataclasses.dataclass
class SplitData:
    """One split, normalised: model inputs (first axis: frames, or songs for bag models),
    class index y [n] and song_ids [n] of every example."""

    inputs: dict[str, np.ndarray]
    y: np.ndarray
    song_ids: np.ndarray


def read_rows(features: str, config: TrainConfig) -> Rows:
    """The labelled feature rows of a feature directory or of a frame table."""
    if config.frame_table:
        from pipeline.storage.frame_table import read_frame_table

        table = read_frame_table(features, name_column=config.name_column,
                                 song_pattern=config.song_pattern,
                                 label_column=config.label_column)
        meta = {sid: {"split": None, "artist": None} for sid in table.song_ids}
        if config.splits:
            meta = _join_splits(meta, config.splits)
        return Rows(spec=table.spec, column="features", x=table.x, song_ids=table.song_ids,
                    labels=table.labels, meta=meta)
    if config.splits:
        raise ParameterError("--splits is for --frame-table; a feature directory carries the "
                             "manifest's split column already")
    store = FeatureStore(features)
    spec = store.read_spec()
    column = feature_column(config.model)
    if column not in spec.columns():
        raise ParameterError(f"model {config.model} reads {column!r}, but {features} holds "
                             f"{sorted(spec.columns())}; extract the matching --features")
    table = store.read_frames(["song_id", "label", "artist", "split", column])
    song_ids = table.column("song_id").to_numpy(zero_copy_only=False)
    meta = {}
    for sid, split, artist in zip(song_ids, table.column("split").to_pylist(),
                                  table.column("artist").to_pylist()):
        meta.setdefault(sid, {"split": split, "artist": artist})
    return Rows(spec=spec, column=column, x=tensor_values(table.column(column)),
                song_ids=song_ids, labels=table.column("label").to_numpy(zero_copy_only=False),
                meta=meta)


def _join_splits(meta: dict, manifest: str) -> dict:
    """``split``/``artist`` of each table song from a manifest, matched on the song name."""
    from pipeline.storage.catalog import load_catalog

    by_name = {}
    for song in load_catalog(manifest):
        by_name[song.song_id] = by_name[song.song_id.rsplit("/", 1)[-1]] = song
    missing = [sid for sid in meta if sid not in by_name]
    if len(missing) == len(meta):
        raise ParameterError(f"no song of the table is in {manifest} (e.g. {missing[0]!r})")
    if missing:
        log.warning("train: %d table songs are not in %s and are left out", len(missing), manifest)
    return {sid: {"split": by_name[sid].split if sid in by_name else None,
                  "artist": by_name[sid].artist if sid in by_name else None} for sid in meta}


def load_splits(features: str, config: TrainConfig):
    """Splits ready for training plus the spec, class order and per-band mean/std of train."""
    rows = read_rows(features, config)
    labelled = np.array([lab is not None for lab in rows.labels])
    if not labelled.any():
        raise ParameterError(f"{features} has no labelled songs; extract with "
                             f"--labels-from-folders or a manifest 'label' column")
    splits = assign_splits(rows.meta, config.split, seed=config.seed)
    classes = sorted({lab for lab in rows.labels[labelled]})
    index = {c: i for i, c in enumerate(classes)}
    row_split = np.array([splits.get(sid) if ok else None
                          for sid, ok in zip(rows.song_ids, labelled)])
    train_rows = row_split == "train"
    if not train_rows.any():
        raise ParameterError("the split leaves no train songs")
    # per band (frames [n, bands, t]) or per dimension (embeddings, table rows [n, dims])
    axes = (0, *range(2, rows.x.ndim))
    train_x = rows.x[train_rows].astype(np.float32)
    mean = train_x.mean(axis=axes)
    std = train_x.std(axis=axes) + 1e-6
    del train_x
    bags = model_level(config.model) == "song"
    out = {}
    for name in ("train", "valid", "test"):
        mask = row_split == name
        x = normalize(rows.x[mask], mean, std)
        y = np.array([index[lab] for lab in rows.labels[mask]], np.int64)
        out[name] = _bag_split(x, y, rows.song_ids[mask]) if bags else \
            SplitData(inputs={"x": x}, y=y, song_ids=rows.song_ids[mask])
    if not len(out["valid"].y):
        raise ParameterError("the split leaves no validation songs (needed for early stopping)")
    return rows.spec, rows.column, classes, mean.astype(np.float32), std.astype(np.float32), out


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std along axis 1 of x [n, bands, ...], in float32."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return ((x.astype(np.float32) - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)


def _bag_split(x: np.ndarray, y: np.ndarray, song_ids: np.ndarray) -> SplitData:
    """One example per song (see :func:`pipeline.features.bags.make_bags`)."""
    frames, mask, rows = make_bags(x, song_ids)
    return SplitData(inputs={"frames": frames, "mask": mask},
                     y=np.array([y[r[0]] for r in rows], np.int64),
                     song_ids=np.array([song_ids[r[0]] for r in rows], dtype=object))


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


def _to_dataset(data: SplitData):
    import ray
    from ray.data.extensions import ArrowTensorArray

    columns = {k: ArrowTensorArray.from_numpy(v) for k, v in data.inputs.items()}
    return ray.data.from_arrow(pa.table({**columns, "y": pa.array(data.y)}))


def train_loop_per_worker(loop: dict) -> None:
    """Ray Train worker: build under the strategy, fit epoch by epoch, report checkpoints."""
    import ray.train

    from pipeline.models.keras import onednn_enabled, tf_keras

    keras = tf_keras()
    import tensorflow as tf

    tf.get_logger().setLevel("WARNING")  # MWMS logs every collective at INFO
    tf.keras.utils.set_random_seed(loop["seed"])
    if loop["use_gpu"]:
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model(loop["model"], tuple(loop["input_shape"]), loop["n_classes"])
        model.compile(optimizer=keras.optimizers.Adam(loop["learning_rate"]),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    state = {"epoch": 0, "best_val_loss": float("inf"), "wait": 0, "history": []}
    best_weights = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resume a restarted run from its last epoch
        with checkpoint.as_directory() as folder:
            state = json.load(open(os.path.join(folder, "state.json")))
            model.set_weights(_load_weights(os.path.join(folder, "current.npz")))
            best_weights = _load_weights(os.path.join(folder, "best.npz"))
    rank = ray.train.get_context().get_world_rank()
    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    inputs = loop["inputs"] if len(loop["inputs"]) > 1 else loop["inputs"][0]
    train_feed, valid_feed = Feed(**loop["train_feed"]), Feed(**loop["valid_feed"])

    def per_replica(shard, feed: Feed, **to_tf):
        # The worker's own shard in whole batches for its replica: Keras neither rebatches
        # nor pads it, so no replica gets an empty batch (see the module docstring).
        return strategy.distribute_datasets_from_function(
            lambda _: shard.to_tf(inputs, "y", batch_size=feed.batch, **to_tf))

    for epoch in range(state["epoch"], loop["epochs"]):
        train_tf = per_replica(train_shard, train_feed, drop_last=True,
                               local_shuffle_buffer_size=4 * train_feed.batch,
                               local_shuffle_seed=loop["seed"] + epoch)
        valid_tf = per_replica(valid_shard, valid_feed)
        epoch_started = time.perf_counter()
        fitted = model.fit(train_tf, validation_data=valid_tf, epochs=1, verbose=0,
                           steps_per_epoch=train_feed.steps, validation_steps=valid_feed.steps)
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
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if rank == 0:
                _save_weights(os.path.join(folder, "current.npz"), current_weights)
                _save_weights(os.path.join(folder, "best.npz"), best_weights)
                with open(os.path.join(folder, "state.json"), "w") as f:
                    json.dump({**state, "stopped_early": stop, "onednn": onednn_enabled()}, f)
                ckpt = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({**row, "best_val_loss": state["best_val_loss"]}, checkpoint=ckpt)
        if stop:
            break


def _save_weights(path: str, weights: list[np.ndarray]) -> None:
    np.savez(path, *weights)


def _load_weights(path: str) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def run_train(features: str, out: str, config: TrainConfig, *, address: str | None = None,
              storage_path: str | None = None, run_name: str | None = None) -> dict:
    """Train ``config.model`` on a feature directory (or frame table) and write the bundle."""
    started = time.perf_counter()
    level = model_level(config.model)
    if config.frame_table and config.model != "dnn":
        raise ParameterError(f"--frame-table rows are feature vectors; train them with "
                             f"--model dnn, not {config.model}")
    spec, column, classes, mean, std, data = load_splits(features, config)
    log.info("train: %d classes, %s train/valid/test = %d/%d/%d", len(classes),
             "songs" if level == "song" else "frames",
             len(data["train"].y), len(data["valid"].y), len(data["test"].y))
    init_ray(address)
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    first = next(iter(data["train"].inputs.values()))
    frame_shape = first.shape[2:] if level == "song" else first.shape[1:]
    unit = "songs" if level == "song" else "frames"
    feeds = {name: worker_feed(len(data[name].y), config.num_workers, config.batch_size,
                               drop_last=name == "train", split=name, unit=unit)
             for name in ("train", "valid")}
    loop = {**dataclasses.asdict(config), "input_shape": list(frame_shape),
            "n_classes": len(classes), "inputs": list(data["train"].inputs),
            **{f"{name}_feed": dataclasses.asdict(feed) for name, feed in feeds.items()}}
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
        run_config=RunConfig(
            name=run_name or f"genres-train-{config.model}-{int(time.time())}",
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            worker_runtime_env=runtime_env()),
        datasets={"train": _to_dataset(data["train"]), "valid": _to_dataset(data["valid"])})
    result = trainer.fit()
    if result.checkpoint is None:
        raise ParameterError(f"training produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as folder:
        state = json.load(open(os.path.join(folder, "state.json")))
        best = _load_weights(os.path.join(folder, "best.npz"))
    model = build_model(config.model, tuple(frame_shape), len(classes))
    model.set_weights(best)
    metrics = {"classes": classes, "epochs_run": state["epoch"],
               "stopped_early": state["stopped_early"],
               "best_val_loss": state["best_val_loss"], "test": None,
               "workers": {"count": config.num_workers, "batch_per_worker": feeds["train"].batch,
                           "train_steps": feeds["train"].steps,
                           "valid_steps": feeds["valid"].steps,
                           "onednn_custom_ops": state.get("onednn")}}
    probs = {name: model.predict(_model_inputs(split), batch_size=8 if level == "song" else 64,
                                 verbose=0)
             for name, split in data.items() if len(split.y)}
    sequence = None
    if level == "frame":  # the learned aggregator, on out-of-sample frame predictions
        from pipeline.models.sequence import fit_sequence, sequence_scores

        sequence = fit_sequence(*_songs(probs["valid"], data["valid"]), len(classes),
                                seed=config.seed)
    for name in ("valid", "test"):
        if name not in probs:
            continue
        split = data[name]
        if level == "song":
            metrics[name] = evaluate_songs(probs[name], split.y, classes, "mil")
        else:
            # the sequence aggregator was fitted on the validation songs: test songs only
            metrics[name] = evaluate(
                probs[name], split.y, split.song_ids, classes,
                sequence=(lambda songs: sequence_scores(sequence, songs)) if name == "test" else None)
    model_id = save_bundle(out, model=model, model_name=config.model, feature=column,
                           classes=classes, spec=spec, mean=mean, std=std,
                           config={**dataclasses.asdict(config), "features": features},
                           metrics=metrics, history=state["history"], level=level,
                           sequence_model=sequence)
    return {"model": config.model, "model_id": model_id, "out": out, "metrics": metrics,
            "epochs": state["epoch"], "seconds": time.perf_counter() - started,
            "train_songs": len(set(data["train"].song_ids)),
            "valid_songs": len(set(data["valid"].song_ids))}


def _model_inputs(split: SplitData):
    """The array (one input) or list of arrays (``frames``, ``mask``) a model predicts on."""
    values = list(split.inputs.values())
    return values[0] if len(values) == 1 else values


def _songs(probs: np.ndarray, split: SplitData) -> tuple[list[np.ndarray], np.ndarray]:
    """Frame probabilities grouped per song, with each song's class."""
    groups = group_by_song(split.song_ids)
    return [probs[rows] for rows in groups.values()], np.array([split.y[r[0]] for r in groups.values()])
