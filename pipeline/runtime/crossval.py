"""The embed model's head chosen by k-fold cross-validation over the train and validation songs.

On a few dozen validation songs the choice of head is noise: on the game catalog one song is
0.056 of the accuracy, and each seed's 13-18 validation songs kept a different head. Where
the train and validation songs are few (at most :data:`CV_MAX_SONGS`), every one of them is
held out once instead.

The driver plans; the cluster moves the data. Per head, the rows of the train and validation
songs (patches, or a bag per song for the pooled head) with each row's fold (hashed from its
artist, else from its song: :func:`pipeline.splits.fold_of`) are put in the object store by a
Ray Data execution, and one Ray task per (head, fold) fits that head on the other folds for as
many epochs as its Ray Train run's early stopping chose, then scores the held-out songs. What
comes back to the driver is per song, bounded by :data:`CV_MAX_SONGS`: each held-out song's
probabilities and class, from which the figures are summed and the kept head's temperature
is fitted (:func:`pipeline.evaluate.calibrate`, ``fit_on="cv"``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from pipeline.evaluate import song_log_loss
from pipeline.models.cnn import build_run_model, model_level

log = logging.getLogger(__name__)

CV_FOLDS = 5
# Train and validation songs up to which the head is chosen by cross-validation. Above it
# the validation songs alone (150 or more at the default 15 %) decide, and the fold fits,
# each on most of the catalog, would cost as much as five more trainings.
CV_MAX_SONGS = 1000


def cv_folds(requested: int | None, heads: list, songs: int) -> int:
    """Folds to choose among ``heads`` with (0: by the validation songs): ``requested``
    (``--cv-folds``), or :data:`CV_FOLDS` where ``songs`` (train and validation) are at most
    :data:`CV_MAX_SONGS`."""
    if len(heads) < 2:
        return 0
    if requested is not None:
        return requested
    return CV_FOLDS if songs <= CV_MAX_SONGS else 0


def cross_validate(data, fits: list[dict], folds: int, most: int) -> dict[str, dict]:
    """Each fitted head's cross-validated song figures: ``song_log_loss`` (the mean
    aggregator's probabilities for patch heads, as scoring gives them), its standard error
    ``song_log_loss_se``, ``song_accuracy``, ``songs`` and ``folds``, and the out-of-fold
    ``probs`` [songs, n_classes] and ``y`` [songs]. ``fits``: the heads' Ray Train runs
    (their settings and epochs); at most ``most`` fold tasks run at once."""
    import ray

    fold_fit = ray.remote(_fit_fold)
    levels, rows, calls = {}, {}, []
    for fit in fits:
        at_level = dataclasses.replace(data, level=model_level(fit["loop"]["model"], fit["head"]))
        if at_level.level not in levels:  # the patch heads share one read of their rows
            levels[at_level.level] = at_level.dataset("train", "valid", folds=folds).to_numpy_refs()
        rows[fit["head"]] = levels[at_level.level]
        settings = {**fit["loop"], "epochs": best_epoch(fit["state"]["history"])}
        # a fold task holds every row of its head and a copy of its training rows
        memory = 3 * at_level.input_bytes("train", "valid") + 2 ** 30
        for k in range(folds):
            calls.append((fit["head"], fold_fit.options(num_cpus=1, memory=memory, max_retries=2),
                          settings, k))
    held: dict[str, list[dict]] = {head: [] for head in rows}  # each fold's held-out songs
    running: dict = {}
    while calls or running:
        while calls and len(running) < max(1, most):
            head, task, settings, k = calls.pop(0)
            running[task.remote(settings, k, rows[head])] = head
        done, _ = ray.wait(list(running), num_returns=1)
        held[running.pop(done[0])].append(ray.get(done[0]))
    return {head: summarize(parts) for head, parts in held.items()}


def best_epoch(history: list[dict]) -> int:
    """The epoch (1-based) of a run's lowest validation loss: the weights it kept."""
    return 1 + int(np.argmin([row["val_loss"] for row in history]))


def summarize(parts: list[dict]) -> dict:
    """Held-out songs of every fold (:func:`held_out_songs`) -> the song log-loss over them,
    its standard error, the song accuracy, the songs, the folds that held any, and all their
    ``probs`` and ``y``."""
    n_classes = max((p["probs"].shape[1] for p in parts), default=1)
    probs = np.concatenate([p["probs"].reshape(-1, n_classes) for p in parts])
    y = np.concatenate([p["y"] for p in parts]).astype(np.int64)
    figures = song_log_loss(probs, y)
    return {**figures, "song_accuracy": float((probs.argmax(1) == y).mean()) if len(y) else None,
            "songs": int(len(y)), "folds": sum(len(p["y"]) > 0 for p in parts),
            "probs": probs, "y": y}


def held_out_songs(song_ids: np.ndarray, probs: np.ndarray, y: np.ndarray) -> dict:
    """The held-out rows as songs: a song's ``probs`` are the mean of its rows' (one row per
    song for a song-level head), ``y`` its class. song_ids, y [n_rows]; probs [n_rows,
    n_classes]."""
    ids, first, index = np.unique(song_ids, return_index=True, return_inverse=True)
    songs = np.zeros((len(ids), probs.shape[1]))
    np.add.at(songs, index, probs)
    songs /= np.bincount(index, minlength=len(ids))[:, None]
    return {"probs": songs, "y": np.asarray(y)[first]}


def _fit_fold(settings: dict, fold: int, blocks: list) -> dict:
    """Ray task: fit a run's model on the rows outside ``fold`` for ``settings["epochs"]``
    epochs and return the :func:`held_out_songs`. ``blocks``: references to the
    head's rows (numpy batches with ``fold``)."""
    import ray
    import tensorflow as tf

    from pipeline.models.keras import tf_keras

    keras = tf_keras()
    tf.config.threading.set_intra_op_parallelism_threads(1)  # one CPU, as the task asked
    batches = ray.get(blocks)
    inputs = settings["inputs"]
    rows = {k: np.concatenate([b[k] for b in batches]) for k in [*inputs, "y", "song_id", "fold"]}
    train, held = rows["fold"] != fold, rows["fold"] == fold
    if not held.any() or not train.any():
        return {"probs": np.zeros((0, settings["n_classes"])), "y": np.zeros(0, np.int64)}

    def x(chosen):
        return {k: rows[k][chosen] for k in inputs} if len(inputs) > 1 else rows["x"][chosen]

    keras.utils.set_random_seed(settings["seed"] + fold)
    model = build_run_model(settings)
    model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]),
                  loss="sparse_categorical_crossentropy")
    weights = settings["class_weights"]
    model.fit(x(train), rows["y"][train], batch_size=settings["batch_size"],
              epochs=settings["epochs"], shuffle=True, verbose=0,
              sample_weight=np.asarray(weights)[rows["y"][train]] if weights else None)
    probs = model.predict(x(held), batch_size=256, verbose=0)
    return held_out_songs(rows["song_id"][held], probs, rows["y"][held])
