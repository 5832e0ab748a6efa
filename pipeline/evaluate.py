"""Frame and song-level evaluation of frame probabilities (pure numpy)."""

from __future__ import annotations

import math

import numpy as np

from pipeline.features.bags import group_by_song
from pipeline.models.aggregate import AGGREGATORS, aggregate, decide

_EPS = 1e-6  # log-odds clip, as pipeline.models.aggregate.logodds
MIN_CALIBRATION_SONGS = 30  # validation songs a temperature is fitted on, at least


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


def song_sums(song_ids: np.ndarray, frame: np.ndarray, probs: np.ndarray, y: np.ndarray,
              **same: np.ndarray) -> dict:
    """Per song, what its frames add up to (rows of whole songs, any order).

    Parameters
    ----------
    song_ids, frame, y : np.ndarray [shape=(n_frames,)]
        each frame's song, its index in the song, and the song's class index
    probs : np.ndarray [shape=(n_frames, n_classes)]
    same : np.ndarray [shape=(n_frames,)]
        columns with one value per song (e.g. its split), returned per song

    Returns
    -------
    dict of arrays, one row per song sorted by song_id: ``song_id``, ``y``, ``frames``,
    ``correct`` (frames whose argmax is ``y``), ``sum_probs`` and ``sum_logodds`` [songs,
    n_classes] (float64; log-odds clipped as :func:`pipeline.models.aggregate.logodds` clips
    them), ``votes`` [songs, n_classes] (frames whose argmax is each class), and ``logodds``
    (per song, its frames' log-odds in frame order [frames, n_classes], float32, as the
    ``sequence`` aggregator reads them), and each column of ``same``.
    """
    from pipeline.models.sequence import frame_logodds

    probs = np.asarray(probs, np.float64)
    order = np.lexsort((frame, song_ids))
    ids, probs, y = np.asarray(song_ids)[order], probs[order], np.asarray(y)[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(ids)]
    best = probs.argmax(axis=1)
    p = np.clip(probs, _EPS, 1 - _EPS)
    logodds = np.log(p / (1 - p))
    votes = np.zeros_like(probs)
    votes[np.arange(len(best)), best] = 1
    sums = (lambda a: np.add.reduceat(a, starts, axis=0) if len(starts) else a[:0])
    sequences = frame_logodds(probs)
    return {**{k: np.asarray(v)[order][starts] for k, v in same.items()},
            "song_id": ids[starts], "y": y[starts], "frames": ends - starts,
            "correct": sums((best == y).astype(np.int64)), "sum_probs": sums(probs),
            "sum_logodds": sums(logodds), "votes": sums(votes),
            "logodds": [sequences[a:b] for a, b in zip(starts, ends)]}


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


def calibration_error(probs: np.ndarray, y: np.ndarray) -> float:
    """Expected calibration error of songs' probabilities: the mean over the songs of
    |accuracy - confidence| within :data:`BINS` equal-width bins of the top probability (Guo
    et al. 2017). probs [n_songs, n_classes] (rows sum to 1), y [n_songs] true classes."""
    if not len(y):
        return 0.0
    figures = tally_calibration(tally({"p": probs}, y, scored="p", temperature=1.0))
    return figures["ece_before"]


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities [n, n_classes] softened (T > 1) or sharpened (T < 1) as softmax(log p / T):
    every row keeps its order of classes, so its argmax."""
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature T in [0.05, 20] that minimises the mean cross-entropy of
    ``with_temperature(probs, T)`` on held-out songs (probs [n_songs, n_classes], y
    [n_songs]): temperature scaling (Guo et al. 2017), one parameter, so a few dozen songs
    fit it. 1.0 when there are none."""
    from scipy.optimize import minimize_scalar

    if not len(y):
        return 1.0

    def loss(log_t: float) -> float:
        p = with_temperature(probs, math.exp(log_t))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())

    found = minimize_scalar(loss, bounds=(math.log(0.05), math.log(20.0)), method="bounded",
                            options={"xatol": 1e-4})
    return float(math.exp(found.x))


# What a temperature may be fitted on, as the summaries name it
FITTED_ON = {"valid": "validation songs",
             "cv": "train and validation songs, each predicted by a fold model that did not "
                   "see it"}


def fitted_temperature(probs: np.ndarray, y: np.ndarray, aggregator: str,
                       fit_on: str = "valid") -> dict:
    """The temperature of ``aggregator``'s song probabilities fitted on held-out songs (probs
    [n_songs, n_classes], y [n_songs]) of ``fit_on`` (see :data:`FITTED_ON`), as the bundle
    records it: ``aggregator``, ``temperature``, ``fitted_on`` and ``songs``.

    Fewer than ``MIN_CALIBRATION_SONGS`` songs leave the scores as they are (T = 1): on the
    game catalog's 13-18 validation songs, right more often than its test songs, the fitted
    temperature sharpened scores that were already over-sure (test ECE 0.230 -> 0.237 and
    0.287 -> 0.332), where GTZAN-3's 61 gave 0.048-0.076 -> 0.027-0.041."""
    enough = len(y) >= MIN_CALIBRATION_SONGS
    return {"aggregator": aggregator, "temperature": fit_temperature(probs, y) if enough else 1.0,
            "fitted_on": fit_on if enough else f"none: fewer than {MIN_CALIBRATION_SONGS} "
                                               f"{FITTED_ON[fit_on]}",
            "songs": int(len(y))}


def calibrate(scored: dict[str, tuple[np.ndarray, np.ndarray]], aggregator: str, *,
              fit_on: str = "valid") -> dict:
    """Temperature scaling of the songs' probabilities ``aggregator`` gives, fitted on the
    songs of ``fit_on``: the validation songs, or (``cv``) the out-of-fold probabilities of
    cross-validation over the train and validation songs, as scikit-learn's
    ``CalibratedClassifierCV(ensemble=False)`` fits its calibrator. ``scored``: split ->
    (probs [n_songs, n_classes], y [n_songs]).

    Returns what the bundle and metrics.json record (:func:`fitted_temperature`), and per
    split the expected calibration error, song log-loss and reliability bins before and after
    (:func:`tally_calibration`; the test songs are never fitted on)."""
    fitted = scored.get(fit_on, (np.zeros((0, 1)), np.zeros(0, np.int64)))
    out = fitted_temperature(*fitted, aggregator, fit_on)
    for split, (probs, y) in scored.items():
        if len(y):
            out[split] = tally_calibration(tally({aggregator: probs}, y, scored=aggregator,
                                                 temperature=out["temperature"]))
    return out


# Song figures as sums that merge: each block of songs is tallied where it lies and only the
# tallies (a few confusion matrices and histograms) come to the driver, whatever the songs.
BINS = 15  # reliability bins of [0, 1] by confidence


def song_scores(songs: dict) -> dict[str, np.ndarray]:
    """Every frame aggregator's song scores [n_songs, n_classes] from :func:`song_sums` rows
    (``frames``, ``sum_probs``, ``sum_logodds``, ``votes``)."""
    frames = np.asarray(songs["frames"], np.float64)[:, None]
    return {"majority": np.asarray(songs["votes"]) / frames,
            "mean": np.asarray(songs["sum_probs"]) / frames,
            "logodds": 1.0 / (1.0 + np.exp(-np.asarray(songs["sum_logodds"]) / frames))}


def tally(scores: dict[str, np.ndarray], y: np.ndarray, *, scored: str, temperature: float,
          frames: np.ndarray | None = None, correct: np.ndarray | None = None,
          sequence: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The figures of some songs of one split as sums (merged by :func:`merge_tallies`, read
    by :func:`tally_metrics` and :func:`tally_calibration`).

    Parameters
    ----------
    scores : dict of np.ndarray [shape=(n_songs, n_classes)]
        each aggregator's song scores (``mean`` ties break the others' argmax)
    y : np.ndarray [shape=(n_songs,)]  true class indices
    scored : str  the aggregator whose scores are probabilities that scoring gives
    temperature : float  their calibration (:func:`with_temperature`)
    frames, correct : np.ndarray [shape=(n_songs,)], optional
        each song's frames and its frames whose argmax is right (frame models)
    sequence : np.ndarray [shape=(n_songs,)], optional  the ``sequence`` aggregator's classes
    """
    y = np.asarray(y, np.int64)
    n = scores[scored].shape[1]
    out = {"songs": np.array(len(y)),
           "frames": np.array(int(np.sum(frames)) if frames is not None else 0),
           "correct": np.array(int(np.sum(correct)) if correct is not None else 0)}
    tie_break = scores.get("mean", scores[scored])
    for name, s in scores.items():
        # the argmax, ties broken by the mean probability (as decide() breaks them)
        pred = np.argmax(np.where(s == s.max(axis=1, keepdims=True), tie_break, -np.inf), axis=1)
        out[f"confusion/{name}"] = confusion(y, pred, n)
    if sequence is not None:
        out["confusion/sequence"] = confusion(y, np.asarray(sequence, np.int64), n)
    probs = np.asarray(scores[scored], np.float64)
    for when, p in (("before", probs), ("after", with_temperature(probs, temperature)
                                        if temperature != 1.0 else probs)):
        losses = -np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1.0))
        out[f"loss/{when}"] = np.array([len(y), losses.sum(), np.square(losses).sum()])
        confidence, right = p.max(1), (p.argmax(1) == y)
        which = np.minimum((confidence * BINS).astype(int), BINS - 1)
        out[f"bins/{when}"] = np.stack([np.bincount(which, minlength=BINS),
                                        np.bincount(which, confidence, minlength=BINS),
                                        np.bincount(which, right, minlength=BINS)], axis=1)
    return out


def merge_tallies(a: dict | None, b: dict) -> dict:
    """Two tallies of the same split as one (sums of every entry)."""
    if a is None:
        return dict(b)
    return {k: a[k] + b[k] if k in a else b[k] for k in a.keys() | b.keys()}


def tally_metrics(t: dict, classes: list[str]) -> dict:
    """A split's figures from its tally, as :func:`evaluate` gives them from the frames:
    ``frames``, ``frame_accuracy`` (None for song-level models), ``songs``, and per
    aggregator ``song_accuracy`` and ``confusion``; ``song_log_loss`` and its standard error
    ``song_log_loss_se`` of the scored probabilities."""
    frames = int(t["frames"])
    confusions = {k.split("/", 1)[1]: v for k, v in t.items() if k.startswith("confusion/")}
    return {"frames": frames or None,
            "frame_accuracy": float(t["correct"] / frames) if frames else None,
            "songs": int(t["songs"]),
            "song_accuracy": {k: float(np.trace(c) / max(1, c.sum())) for k, c in confusions.items()},
            "confusion": {k: c.tolist() for k, c in confusions.items()},
            **_log_loss(t["loss/before"])}


def tally_calibration(t: dict) -> dict:
    """A split's calibration figures from its tally: expected calibration error, song
    log-loss and reliability bins, before and after the temperature."""
    out = {}
    for when in ("before", "after"):
        bins = t[f"bins/{when}"]
        songs = max(1.0, bins[:, 0].sum())
        out[f"ece_{when}"] = float(np.abs(bins[:, 2] - bins[:, 1]).sum() / songs)
        out[f"log_loss_{when}"] = _log_loss(t[f"loss/{when}"])["song_log_loss"]
        out[f"reliability_{when}"] = [
            {"low": float(b / BINS), "songs": int(count), "confidence": float(conf / count),
             "accuracy": float(right / count)}
            for b, (count, conf, right) in enumerate(bins) if count]
    return out


def _log_loss(sums: np.ndarray) -> dict:
    """Mean song cross-entropy and its standard error from (songs, sum, sum of squares)."""
    n, total, squares = (float(v) for v in sums)
    if not n:
        return {"song_log_loss": None, "song_log_loss_se": None}
    se = (math.sqrt(max(0.0, squares - total * total / n) / (n - 1)) / math.sqrt(n)
          if n > 1 else 0.0)
    return {"song_log_loss": total / n, "song_log_loss_se": se}
