"""Bags for multiple-instance models: the frames of each song stacked with a mask (pure numpy)."""

from __future__ import annotations

import numpy as np


def group_by_song(song_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of each song, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, sid in enumerate(song_ids):
        groups.setdefault(sid, []).append(i)
    return {sid: np.asarray(rows) for sid, rows in groups.items()}


def make_bags(x: np.ndarray, song_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Frames [n, ...] -> (frames [songs, max_frames, ...], mask [songs, max_frames], row lists).

    Songs come in first-seen order; ``row lists`` gives each song's row indices into ``x``.
    Short songs are padded by repeating their own frames: the mask (1 real, 0 padding) keeps
    the repeats out of the pooling, and batch norm in training sees real frames only, never
    artificial zeros.
    """
    rows = list(group_by_song(song_ids).values())
    n = max((len(r) for r in rows), default=1)
    frames = np.empty((len(rows), n, *x.shape[1:]), np.float32)
    mask = np.zeros((len(rows), n), np.float32)
    for i, r in enumerate(rows):
        frames[i] = x[np.resize(r, n)]
        mask[i, :len(r)] = 1.0
    return frames, mask, rows
