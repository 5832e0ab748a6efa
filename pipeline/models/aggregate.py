"""Song-level aggregation of frame probabilities (pure numpy)."""

from __future__ import annotations

import numpy as np

from pipeline.errors import ParameterError

_EPS = 1e-6


def majority(probs: np.ndarray) -> np.ndarray:
    """Share of frames whose argmax is each class.

    Parameters
    ----------
    probs : np.ndarray [shape=(n_frames, n_classes)]

    Returns
    -------
    np.ndarray [shape=(n_classes,)]
        Vote shares, summing to 1 (use :func:`decide` to break ties).
    """
    probs = _check(probs)
    return np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]) / probs.shape[0]


def mean(probs: np.ndarray) -> np.ndarray:
    """Mean probability per class over frames; shape (n_classes,)."""
    return _check(probs).mean(axis=0)


def logodds(probs: np.ndarray) -> np.ndarray:
    """Mean per-frame log-odds, per class, mapped back through the sigmoid.

    For each class c: ``sigmoid(mean_f log(p_fc / (1 - p_fc)))``. Each value is a probability
    of its own class (one-vs-rest), so they need not sum to 1. Probabilities are clipped to
    [1e-6, 1 - 1e-6] so a single saturated frame cannot dominate with an infinite log-odds.
    """
    p = np.clip(_check(probs), _EPS, 1 - _EPS)
    return 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)).mean(axis=0)))


AGGREGATORS = {"majority": majority, "mean": mean, "logodds": logodds}


def aggregate(probs: np.ndarray, method: str) -> np.ndarray:
    """Song scores from frame probabilities [n_frames, n_classes] by ``method``."""
    try:
        fn = AGGREGATORS[method]
    except KeyError:
        raise ParameterError(f"unknown aggregator {method!r}; choose one of {sorted(AGGREGATORS)}") from None
    return fn(probs)


def decide(scores: np.ndarray, probs: np.ndarray) -> int:
    """Winning class index: argmax of scores, ties broken by mean frame probability."""
    best = np.flatnonzero(scores == scores.max())
    if best.size == 1:
        return int(best[0])
    return int(best[np.argmax(np.asarray(probs).mean(axis=0)[best])])


def _check(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ParameterError(f"frame probabilities must be (n_frames>0, n_classes), got {probs.shape}")
    return probs
