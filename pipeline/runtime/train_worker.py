"""The Ray Train worker loop: build the model under the strategy, feed it, checkpoint it.

Each worker builds the model (normalising its own input; under
``MultiWorkerMirroredStrategy`` when there are several workers), fits one epoch at a time on
its shard, and reports a checkpoint (current and best weights) every epoch; a restarted run
goes on from its last one.

No replica ever gets an empty batch: each worker feeds its own replica whole batches of its
equal shard (:func:`worker_feed`). Keras' own rebatching of a worker's dataset split a last
partial batch of fewer rows than workers into empty pieces, and TensorFlow's oneDNN Conv2D
(on by default on CPUs with AVX512-VNNI/BF16, AVX-VNNI or AMX) answers an empty batch with a
tensor of its input's shape, which failed the next convolution.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

import numpy as np

from pipeline.errors import ParameterError
from pipeline.models.cnn import build_run_model
from pipeline.runtime.cluster import gpus_seen_here

_PREFETCH = 8  # batches a worker's input pipeline holds ready for the next steps


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
        model.set_weights(load_weights(os.path.join(folder, "current.npz")))
        best_weights = load_weights(os.path.join(folder, "best.npz"))
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
            save_weights(os.path.join(folder, "current.npz"), current)
            save_weights(os.path.join(folder, "best.npz"), best)
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


def save_weights(path: str, weights: list[np.ndarray]) -> None:
    np.savez(path, *weights)


def load_weights(path: str) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]
