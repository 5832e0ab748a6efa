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
        scores = [aggregate(probs[rows], name) for rows in groups.values()]
        pred = np.array([decide(s, probs[rows]) for s, rows in zip(scores, groups.values())])
        if name == "mean":  # the song probabilities scoring gives: their cross-entropy
            result.update(song_log_loss(np.array(scores), truth))
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
            "confusion": {name: confusion(y, pred, len(classes)).tolist()},
            **song_log_loss(probs, y)}


def song_log_loss(probs: np.ndarray, y: np.ndarray) -> dict:
    """Mean cross-entropy of songs' probabilities (probs [n_songs, n_classes], y [n_songs]
    true class indices) in nats, and its standard error over the songs."""
    if not len(y):
        return {"song_log_loss": None, "song_log_loss_se": None}
    losses = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))
    return {"song_log_loss": float(losses.mean()),
            "song_log_loss_se": float(losses.std(ddof=1) / math.sqrt(len(y))) if len(y) > 1
            else 0.0}


def scored_accuracy(song_accuracy: dict) -> float:
    """The song accuracy scoring's default gives: the ``mean`` aggregator's for frame models,
    a song-level model's own (its only entry) otherwise."""
    return song_accuracy.get("mean", max(song_accuracy.values()))


def simplest_within_one_se(losses: dict[str, tuple[float, float]]) -> str:
    """The first key of ``losses`` (models, simplest first) whose validation song log-loss is
    within one standard error of the lowest; values are (mean log-loss, its standard error).

    The one-standard-error rule of model selection (Breiman et al. 1984), on a proper scoring
    rule: on a few dozen validation songs accuracy moves in steps of a song, and a head that
    early stopping caught at its luckiest epoch reads several songs better than it is (the
    game catalog: dense 14/18 on validation, 27/55 on test; the pooled head 12/18, 35/55);
    the log-loss weighs how sure every answer was, and there they were level.
    """
    best = min(losses, key=lambda name: losses[name][0])
    limit = losses[best][0] + losses[best][1]
    return next(name for name, (loss, _) in losses.items() if loss <= limit + 1e-12)
