"""Frame and song-level evaluation of frame probabilities (pure numpy)."""

from __future__ import annotations

import numpy as np

from pipeline.models.aggregate import AGGREGATORS, aggregate, decide


def group_by_song(song_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of each song, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, sid in enumerate(song_ids):
        groups.setdefault(sid, []).append(i)
    return {sid: np.asarray(rows) for sid, rows in groups.items()}


def confusion(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion matrix [n_classes (truth), n_classes (predicted)] of counts."""
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (truth, pred), 1)
    return out


def evaluate(probs: np.ndarray, y: np.ndarray, song_ids: np.ndarray, classes: list[str]) -> dict:
    """Frame accuracy and song accuracy per aggregator.

    Parameters
    ----------
    probs : np.ndarray [shape=(n_frames, n_classes)]
    y : np.ndarray [shape=(n_frames,)]  true class index of each frame (constant per song)
    song_ids : np.ndarray [shape=(n_frames,)]
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
    return result
