"""Song-level and artist-level train/valid/test splits (pure, deterministic)."""

from __future__ import annotations

import hashlib

from pipeline.errors import ParameterError

SPLIT_METHODS = ("auto", "manifest", "song", "artist")


def _unit(key: str, seed: int) -> float:
    """A stable number in [0, 1) for ``key``."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


def assign_splits(songs: dict[str, dict], method: str = "auto", *, test: float = 0.2,
                  valid: float = 0.15, seed: int = 0) -> dict[str, str | None]:
    """Split of every song: ``train``, ``valid``, ``test`` or None (excluded).

    Parameters
    ----------
    songs : {song_id: {"split": str|None, "artist": str|None}}
    method : "manifest" uses the ``split`` column; "song" hashes the song_id; "artist" hashes the
        artist so no artist is on two sides; "auto" is "manifest" when any split is given, else
        "song". Validation songs are always disjoint from train and test songs.
    """
    if method not in SPLIT_METHODS:
        raise ParameterError(f"unknown split {method!r}; choose one of {SPLIT_METHODS}")
    given = any(meta.get("split") for meta in songs.values())
    if method == "auto":
        method = "manifest" if given else "song"
    if method == "manifest":
        if not given:
            raise ParameterError("--split manifest needs a manifest with a 'split' column; "
                                 "use --split song or --split artist")
        return {sid: meta.get("split") or None for sid, meta in songs.items()}
    out = {}
    for sid, meta in songs.items():
        if method == "artist":
            if not meta.get("artist"):
                raise ParameterError(f"--split artist needs an artist for every song; "
                                     f"{sid} has none")
            key = "artist:" + meta["artist"]
        else:
            key = "song:" + sid
        u = _unit(key, seed)
        out[sid] = "test" if u < test else "valid" if u < test + valid else "train"
    return out
