"""Song-level and artist-level train/valid/test splits (pure, deterministic, decided per row).

A row's split depends only on its own song_id, artist and manifest ``split`` value, so every
frame of a song lands on the same side wherever and in whatever order it is processed: the
training pipeline computes it inside Ray Data, with no list of songs anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from pipeline.errors import ParameterError

SPLIT_METHODS = ("auto", "manifest", "song", "artist")
SPLITS = ("train", "valid", "test")
# A resolved method: the manifest's split, with validation songs taken from its train songs
# (most published splits name train and test only).
VALID_FROM_TRAIN = "manifest+valid"


def _unit(key: str, seed: int) -> float:
    """A stable number in [0, 1) for ``key``."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def resolve_method(method: str, *, any_given: bool) -> str:
    """``manifest``, ``song`` or ``artist``: "auto" is "manifest" when any row carries a
    manifest split (``any_given``), else "song"."""
    if method not in SPLIT_METHODS:
        raise ParameterError(f"unknown split {method!r}; choose one of {SPLIT_METHODS}")
    if method == "auto":
        return "manifest" if any_given else "song"
    if method == "manifest" and not any_given:
        raise ParameterError("--split manifest needs a manifest with a 'split' column; "
                             "use --split song or --split artist")
    return method


@dataclasses.dataclass(frozen=True)
class SplitRule:
    """How each row's split is decided: a resolved ``method`` (see :func:`split_rows`),
    its ``seed``, and the ``valid`` and ``test`` shares it draws."""

    method: str
    seed: int = 0
    valid: float = 0.15
    test: float = 0.2

    def of(self, song_ids, artists, given) -> np.ndarray:
        """The split of each row (see :func:`split_rows`)."""
        return split_rows(song_ids, artists, given, self.method, seed=self.seed,
                          test=self.test, valid=self.valid)


def split_rows(song_ids, artists, given, method: str, *, seed: int = 0, test: float = 0.2,
               valid: float = 0.15) -> np.ndarray:
    """The split of each row: ``train``, ``valid``, ``test`` or None (excluded).

    Parameters
    ----------
    song_ids, artists, given : sequences of the same length
        Each row's song_id, artist (or None) and manifest split (or None/"").
    method : "manifest" (the given split), "manifest+valid" (the given split, with a
        ``valid`` share of the train songs moved to ``valid``: by a hash of the artist where
        the row has one, so an artist's train songs stay together, else of the song_id),
        "song" (a hash of the song_id) or "artist" (a hash of the artist, so no artist is on
        two sides); see :func:`resolve_method`.
    """
    if method == "manifest":
        return np.array([g or None for g in given], dtype=object)
    if method == VALID_FROM_TRAIN:
        out = np.array([g or None for g in given], dtype=object)
        moved: dict[str, bool] = {}
        for i in np.flatnonzero(out == "train"):
            key = f"artist:{artists[i]}" if artists[i] else f"song:{song_ids[i]}"
            if key not in moved:
                moved[key] = _unit("valid-from-train:" + key, seed) < valid
            if moved[key]:
                out[i] = "valid"
        return out
    if method not in ("song", "artist"):
        raise ParameterError(f"split method {method!r} is not resolved; see resolve_method")
    out = np.empty(len(song_ids), dtype=object)
    memo: dict[str, str] = {}  # a song's frames are neighbours: hash each key once
    for i, (sid, artist) in enumerate(zip(song_ids, artists)):
        if method == "artist":
            if not artist:
                raise ParameterError(f"--split artist needs an artist for every song; "
                                     f"{sid} has none")
            key = "artist:" + artist
        else:
            key = "song:" + sid
        if key not in memo:
            u = _unit(key, seed)
            memo[key] = "test" if u < test else "valid" if u < test + valid else "train"
        out[i] = memo[key]
    return out


def fold_of(song_ids, artists, folds: int, *, seed: int = 0) -> np.ndarray:
    """Each row's cross-validation fold in [0, ``folds``): by a hash of its artist where the
    row has one, else of its song_id, so that no artist and no song is in two folds (a song's
    frames, and an artist's songs, are held out together).

    song_ids, artists : sequences of the same length (an artist may be None or "").
    Returns int64 [n_rows].
    """
    if folds < 2:
        raise ParameterError(f"cross-validation needs at least 2 folds, not {folds}")
    out = np.empty(len(song_ids), np.int64)
    memo: dict[str, int] = {}
    for i, (sid, artist) in enumerate(zip(song_ids, artists)):
        key = f"artist:{artist}" if artist else f"song:{sid}"
        if key not in memo:
            memo[key] = int(_unit("fold:" + key, seed) * folds)
        out[i] = memo[key]
    return out
