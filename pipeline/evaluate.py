"""Frame and song-level evaluation of frame probabilities (pure numpy)."""

from __future__ import annotations

import math

import numpy as np

from pipeline.features.bags import group_by_song
from pipeline.models.aggregate import AGGREGATORS, aggregate, decide


def confusion(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix [n_classes (truth), n_classes (predicted)] of counts."""
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (truth, pred), 1)
    return out


def evaluate(probs: np.ndarray, y: np.ndarray, song_ids: np.ndarray, classes: list[str], *,
             sequence=None) -> dict:
    """Frame accuracy and song accuracy per aggregator.

    Parameters
    ----------
    probs : np.ndarray [shape=(n_frames, n_classes)]
    y : np.ndarray [shape=(n_frames,)]  true class index of each frame (constant per song)
    song_ids : np.ndarray [shape=(n_frames,)]
    sequence : callable, optional
        The learned aggregator: list of per-song frame probabilities -> song scores
        [n_songs, n_classes]; reported as ``sequence``.
    """
    n = len(classes)
    result = {"frames": int(len(y)), "frame_accuracy": float((probs.argmax(1) == y).mean()),
              "songs": 0, "song_accuracy": {}, "confusion": {}}
    groups = group_by_song(song_ids)
    result["songs"] = len(groups)
    truth = np.array([y[rows[0]] for rows in groups.values()])
    for name in AGGREGATORS:
        pred = np.array([decide(aggregate(probs[rows], name), probs[rows])
                         for rows in groups.values()])
        result["song_accuracy"][name] = float((pred == truth).mean())
        result["confusion"][name] = confusion(truth, pred, n).tolist()
    if sequence is not None:
        pred = np.asarray(sequence([probs[rows] for rows in groups.values()])).argmax(1)
        result["song_accuracy"]["sequence"] = float((pred == truth).mean())
        result["confusion"]["sequence"] = confusion(truth, pred, n).tolist()
    return result


def evaluate_songs(probs: np.ndarray, y: np.ndarray, classes: list[str], name: str) -> dict:
    """Song accuracy of a model that predicts songs directly (probs [n_songs, n_classes])."""
    pred = probs.argmax(1)
    return {"frames": None, "frame_accuracy": None, "songs": int(len(y)),
            "song_accuracy": {name: float((pred == y).mean())},
            "confusion": {name: confusion(y, pred, len(classes)).tolist()}}


def scored_accuracy(song_accuracy: dict) -> float:
    """The song accuracy scoring's default gives: the ``mean`` aggregator's for frame models,
    a song-level model's own (its only entry) otherwise."""
    return song_accuracy.get("mean", max(song_accuracy.values()))


def simplest_within_one_se(accuracy: dict[str, float], songs: int) -> str:
    """The first key of ``accuracy`` (models, simplest first) whose validation song accuracy
    is within one standard error, ``sqrt(p (1 - p) / songs)`` at the best ``p``, of the best.

    The one-standard-error rule of model selection (Breiman et al. 1984): on a few dozen
    validation songs a lead of a song or two is noise, not evidence for a more flexible model.
    """
    best = max(accuracy.values())
    margin = math.sqrt(best * (1.0 - best) / max(songs, 1))
    return next(name for name, a in accuracy.items() if a >= best - margin - 1e-9)
