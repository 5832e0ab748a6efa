"""Bags for multiple-instance models: the frames of each song stacked with a mask (pure numpy)."""

from __future__ import annotations

import numpy as np


def group_by_song(song_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of each song, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, sid in enumerate(song_ids):
        groups.setdefault(sid, []).append(i)
    return {sid: np.asarray(rows) for sid, rows in groups.items()}


def song_bag(frames: np.ndarray, n: int,
             rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One song's frames [k, ...] as a bag of exactly ``n`` frames [n, ...] and its mask [n].

    A song of more than ``n`` frames keeps ``n`` of them in order: drawn without replacement
    by ``rng`` (training draws anew every epoch) or evenly spaced without one. A shorter song
    is padded by repeating its own frames: the mask (1 real, 0 padding) keeps the repeats out
    of the pooling, and batch norm in training sees real frames only, never artificial zeros.
    """
    k = len(frames)
    if k > n:
        index = (np.sort(rng.choice(k, n, replace=False)) if rng is not None
                 else np.linspace(0, k - 1, n).round().astype(int))
    else:
        index = np.resize(np.arange(k), n)
    return frames[index].astype(np.float32), (np.arange(n) < k).astype(np.float32)


def make_bags(x: np.ndarray, song_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Frames [n, ...] -> (frames [songs, max_frames, ...], mask [songs, max_frames], row lists).

    Every frame of every song, padded to the longest song (see :func:`song_bag`). Songs come
    in first-seen order; ``row lists`` gives each song's row indices into ``x``.
    """
    rows = list(group_by_song(song_ids).values())
    n = max((len(r) for r in rows), default=1)
    frames = np.empty((len(rows), n, *x.shape[1:]), np.float32)
    mask = np.zeros((len(rows), n), np.float32)
    for i, r in enumerate(rows):
        frames[i], mask[i] = song_bag(x[r], n)
    return frames, mask, rows


def pool_bags(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Bags [b, n, d] with masks [b, n] -> [b, 2d]: the mean and standard deviation of each
    bag's real rows (as the embed model's ``pooled`` head computes them in Keras)."""
    w = mask[..., None].astype(np.float64)
    n = np.maximum(w.sum(axis=1), 1.0)
    mean = (frames * w).sum(axis=1) / n
    var = (np.square(frames - mean[:, None]) * w).sum(axis=1) / n
    return np.concatenate([mean, np.sqrt(var + 1e-6)], axis=1)
