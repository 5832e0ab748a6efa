"""Training on Ray Train: a thin per-worker loop around the pure Keras builders.

The driver reads the committed feature rows, splits songs, fits the normalisation on train
songs only, and hands Ray Datasets to a ``TensorflowTrainer``. Each worker builds the model
under ``MultiWorkerMirroredStrategy``, fits one epoch at a time on its dataset shard, and
reports a checkpoint (current and best weights) every epoch. The driver then evaluates the
best weights on the test songs and writes the bundle.
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
from pipeline.evaluate import evaluate
from pipeline.models.cnn import build_model, feature_column
from pipeline.runtime.session import RUNTIME_ENV, init_ray
from pipeline.splits import assign_splits
from pipeline.storage.bundle import save_bundle
from pipeline.storage.shards import FeatureStore, tensor_values

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train; recorded in the bundle's config.json."""

    model: str = "cnn2d"
    split: str = "auto"
    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 1e-3
    patience: int = 6
    num_workers: int = 1
    use_gpu: bool = False
    seed: int = 0


@dataclasses.dataclass
class SplitData:
    """Normalised frames of one split: x [n, bands, t] float32, y [n] int, song_ids [n]."""

    x: np.ndarray
    y: np.ndarray
    song_ids: np.ndarray


def load_splits(features: str, config: TrainConfig):
    """Frames per split plus the class order and per-band mean/std of the train split."""
    store = FeatureStore(features)
    spec = store.read_spec()
    column = feature_column(config.model)
    table = store.read_frames(["song_id", "label", "artist", "split", column])
    labels = table.column("label").to_numpy(zero_copy_only=False)
    labelled = np.array([lab is not None for lab in labels])
    if not labelled.any():
        raise ParameterError(f"{features} has no labelled songs; extract with "
                             f"--labels-from-folders or a manifest 'label' column")
    song_ids = table.column("song_id").to_numpy(zero_copy_only=False)
    meta = {}
    for sid, split, artist in zip(song_ids, table.column("split").to_pylist(),
                                  table.column("artist").to_pylist()):
        meta.setdefault(sid, {"split": split, "artist": artist})
    splits = assign_splits(meta, config.split, seed=config.seed)
    classes = sorted({lab for lab in labels[labelled]})
    index = {c: i for i, c in enumerate(classes)}
    x_all = tensor_values(table.column(column))
    row_split = np.array([splits[sid] if ok else None for sid, ok in zip(song_ids, labelled)])
    train_rows = row_split == "train"
    if not train_rows.any():
        raise ParameterError("the split leaves no train songs")
    # per band (frames [n, bands, t]) or per dimension (embeddings [n, dims])
    axes = (0, *range(2, x_all.ndim))
    train_x = x_all[train_rows].astype(np.float32)
    mean = train_x.mean(axis=axes)
    std = train_x.std(axis=axes) + 1e-6
    del train_x
    out = {}
    for name in ("train", "valid", "test"):
        rows = row_split == name
        x = normalize(x_all[rows], mean, std)
        out[name] = SplitData(x=x, y=np.array([index[lab] for lab in labels[rows]], np.int64),
                              song_ids=song_ids[rows])
    if not len(out["valid"].y):
        raise ParameterError("the split leaves no validation songs (needed for early stopping)")
    return spec, classes, mean.astype(np.float32), std.astype(np.float32), out


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std along axis 1 of x [n, bands, ...], in float32."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return ((x.astype(np.float32) - mean.reshape(shape)) / std.reshape(shape)).astype(np.float32)


def _to_dataset(data: SplitData):
    import ray
    from ray.data.extensions import ArrowTensorArray

    table = pa.table({"x": ArrowTensorArray.from_numpy(data.x), "y": pa.array(data.y)})
    return ray.data.from_arrow(table)


def train_loop_per_worker(loop: dict) -> None:
    """Ray Train worker: build under the strategy, fit epoch by epoch, report checkpoints."""
    import ray.train

    from pipeline.models.keras import tf_keras

    keras = tf_keras()
    import tensorflow as tf

    tf.get_logger().setLevel("WARNING")  # MWMS logs every collective at INFO
    tf.keras.utils.set_random_seed(loop["seed"])
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
    for epoch in range(state["epoch"], loop["epochs"]):
        train_tf = train_shard.to_tf("x", "y", batch_size=loop["batch_size"],
                                     local_shuffle_buffer_size=4 * loop["batch_size"],
                                     local_shuffle_seed=loop["seed"] + epoch)
        valid_tf = valid_shard.to_tf("x", "y", batch_size=loop["batch_size"])
        fitted = model.fit(train_tf, validation_data=valid_tf, epochs=1, verbose=0)
        row = {"epoch": epoch + 1, **{k: float(v[-1]) for k, v in fitted.history.items()}}
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
                    json.dump({**state, "stopped_early": stop}, f)
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
    """Train ``config.model`` on a feature directory and write the bundle to ``out``."""
    started = time.perf_counter()
    spec, classes, mean, std, data = load_splits(features, config)
    column = feature_column(config.model)
    log.info("train: %d classes, frames train/valid/test = %d/%d/%d", len(classes),
             len(data["train"].y), len(data["valid"].y), len(data["test"].y))
    init_ray(address)
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    loop = {**dataclasses.asdict(config), "input_shape": list(data["train"].x.shape[1:]),
            "n_classes": len(classes)}
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu),
        run_config=RunConfig(
            name=run_name or f"genres-train-{config.model}-{int(time.time())}",
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            worker_runtime_env=RUNTIME_ENV),
        datasets={"train": _to_dataset(data["train"]), "valid": _to_dataset(data["valid"])})
    result = trainer.fit()
    if result.checkpoint is None:
        raise ParameterError(f"training produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as folder:
        state = json.load(open(os.path.join(folder, "state.json")))
        best = _load_weights(os.path.join(folder, "best.npz"))
    model = build_model(config.model, tuple(loop["input_shape"]), len(classes))
    model.set_weights(best)
    metrics = {"classes": classes, "epochs_run": state["epoch"],
               "stopped_early": state["stopped_early"],
               "best_val_loss": state["best_val_loss"], "test": None}
    for name in ("valid", "test"):
        split = data[name]
        if len(split.y):
            probs = model.predict(split.x, batch_size=64, verbose=0)
            metrics[name] = evaluate(probs, split.y, split.song_ids, classes)
    model_id = save_bundle(out, model=model, model_name=config.model, feature=column,
                           classes=classes, spec=spec, mean=mean, std=std,
                           config={**dataclasses.asdict(config), "features": features},
                           metrics=metrics, history=state["history"])
    return {"model": config.model, "model_id": model_id, "out": out, "metrics": metrics,
            "epochs": state["epoch"], "seconds": time.perf_counter() - started,
            "train_songs": len(set(data["train"].song_ids)),
            "valid_songs": len(set(data["valid"].song_ids))}
