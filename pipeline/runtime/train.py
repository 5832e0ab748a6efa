"""Training on Ray Train: the driver's side of a run.

The driver plans (:mod:`pipeline.runtime.train_data`): it aggregates the classes, the split
sizes and the per-band statistics of the train frames in the cluster, and hands Ray Train one
streaming dataset per split, read from the committed feature parts. Each worker builds the
model and fits it epoch by epoch (:mod:`pipeline.runtime.train_worker`); actors then predict
the validation and test songs with the best weights and the metrics are made by song in the
cluster (:mod:`pipeline.runtime.evaluation`). The embed model's heads are chosen by
cross-validation where the songs are few (:mod:`pipeline.runtime.crossval`), and the kept
fit becomes the bundle.

A run is named after its output, settings and data: started again after a worker, node or
driver death, it resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time

import numpy as np

from pipeline.errors import ParameterError
from pipeline.evaluate import MIN_CALIBRATION_SONGS, simplest_within_one_se
from pipeline.models.cnn import HEADS, model_level, pooled_l2, song_pooling
from pipeline.models.keras import load_tensorflow_quietly
from pipeline.runtime.cluster import Bounds, Limits, connect, plan_size, wait_for
from pipeline.runtime.crossval import cross_validate, cv_folds
from pipeline.runtime.evaluation import baseline, evaluate_fit, head_figures, recalibrate
from pipeline.runtime.session import runtime_env, verbose
from pipeline.runtime.train_data import (TrainingData, open_source, plan_training_data,
                                         song_stats)
from pipeline.runtime.train_worker import Feed, load_weights, train_loop_per_worker, worker_feed
from pipeline.storage import fs as fsio
from pipeline.storage.bundle import save_bundle

log = logging.getLogger(__name__)

_MAX_FAILURES = 3  # worker-group restarts (from the last checkpoint) before a run fails
# training frames (train + valid) up to this are read once and kept in the object store: a
# size the job asks for, not one read off the cluster (an autoscaling cluster's nodes come and
# go; Ray spills what does not fit), and a quarter of the object store of a 16 GiB node
_CACHE_BYTES = 2 ** 30
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
        fits.append(evaluate_fit(at_level, fit, limits))
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
    kept, selection, cv = _choose_head(data, fits, config, limits)
    chosen = next(f for f in fits if f["head"] == kept)
    metrics = chosen["metrics"]
    # The validation songs, held out from training by artist, stand closest to new songs:
    # their temperature where there are enough of them (GTZAN-3's 61: test ECE 0.059 ->
    # 0.035), else one from the cross-validation's out-of-fold songs, not from 13-18 songs.
    if kept in cv and data.counts["valid"].songs < MIN_CALIBRATION_SONGS:
        metrics["calibration"] = recalibrate(chosen, cv[kept]["probs"], cv[kept]["y"], "cv")
    if config.model == "embed":
        metrics["head"], metrics["selection"] = kept, selection
        # each head's cross-validated figures beside its others (its songs' probabilities not)
        metrics["heads"] = {f["head"]: {**head_figures(f),
                                        **{f"cv_{k}": v for k, v in cv.get(f["head"], {}).items()
                                           if k not in ("probs", "y")}} for f in fits}
        if "logistic" in metrics["heads"]:  # the linear baseline the kept head has to beat
            metrics["baseline"] = baseline(metrics["heads"], kept)
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
                 limits: Limits) -> tuple[str | None, dict, dict]:
    """The head to keep, how it was chosen (``by``, on how many ``songs``, ``folds``), and
    each head's cross-validated figures (:func:`pipeline.runtime.crossval.cross_validate`;
    none where it did not run): the simplest whose song log-loss is within one standard
    error of the best, by cross-validation over the train and validation songs where they
    are few, else on the validation songs."""
    if len(fits) == 1:
        return fits[0]["head"], {"by": "given"}, {}
    songs = data.counts["train"].songs + data.counts["valid"].songs
    folds = cv_folds(config.cv_folds, fits, songs)
    started = time.perf_counter()
    cv = cross_validate(data, fits, folds, plan_size(limits)) if folds else {}
    if cv:
        losses = {h: (f["song_log_loss"], f["song_log_loss_se"]) for h, f in cv.items()}
        by, songs = f"{folds}-fold cross-validation", cv[fits[0]["head"]]["songs"]
    else:
        losses = {f["head"]: (f["metrics"]["valid"]["song_log_loss"],
                              f["metrics"]["valid"]["song_log_loss_se"]) for f in fits}
        by, songs = "validation", data.counts["valid"].songs
    kept = simplest_within_one_se(losses)
    log.info("train: heads' song log-loss by %s on %d songs (%.0f s): %s; kept %s (the simplest "
             "within one standard error of the best)", by, songs, time.perf_counter() - started,
             ", ".join(f"{h} {loss:.3f}±{se:.3f}" for h, (loss, se) in losses.items()), kept)
    return kept, {"by": by, "songs": songs, "folds": folds}, cv


def _fit(data: TrainingData, config: TrainConfig, out: str, *, storage_path: str,
         run_name: str | None, limits: Limits, wait_s: float) -> dict:
    """One Ray Train run of ``config`` on ``data``: its ``run`` name, ``loop`` settings, last
    ``state`` and ``best`` weights. Its worker group is waited for first (up to ``wait_s``):
    Ray Train gives a group 60 s to be placed, less than an autoscaler takes to bring a
    node."""
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
    # Frames up to _CACHE_BYTES are read once, not every epoch: on 2 CPUs, reading and
    # splitting the parts again cost each epoch a quarter more than plain Keras (9,427 frames:
    # 49.3 s against 38.4 s). A catalog's worth streams every epoch.
    cache = data.level == "frame" and data.input_bytes("train", "valid") <= _CACHE_BYTES
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
        best = load_weights(os.path.join(folder, "best.npz"))
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


