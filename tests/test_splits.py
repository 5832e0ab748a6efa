import numpy as np
import pytest

from pipeline.errors import ParameterError
from pipeline.splits import VALID_FROM_TRAIN, SplitRule, fold_of, resolve_method, split_rows


def _rows(n, artists=7, frames=3):
    """``frames`` rows per song, as a feature table has them."""
    songs = [f"song{i:04d}" for i in range(n) for _ in range(frames)]
    return songs, [f"artist{int(s[4:]) % artists}" for s in songs], [None] * len(songs)


def test_song_split_is_deterministic_per_row_and_covers_all():
    songs, artists, given = _rows(500)
    first = split_rows(songs, artists, given, "song")
    # any order, any batching: a row's split depends on the row alone
    order = np.random.default_rng(0).permutation(len(songs))
    again = np.empty_like(first)
    for chunk in np.array_split(order, 7):
        again[chunk] = split_rows([songs[i] for i in chunk], [artists[i] for i in chunk],
                                  [given[i] for i in chunk], "song")
    assert list(first) == list(again)
    per_song = {}
    for sid, side in zip(songs, first):
        per_song.setdefault(sid, set()).add(side)
    assert all(len(s) == 1 for s in per_song.values())  # every frame of a song on one side
    counts = {s: sum(side == {s} for side in per_song.values()) for s in ("train", "valid", "test")}
    assert all(c > 0 for c in counts.values()) and sum(counts.values()) == 500
    assert 0.1 < counts["test"] / 500 < 0.3


def test_no_artist_on_both_sides():
    songs, artists, given = _rows(300, artists=40)
    sides = {}
    for artist, side in zip(artists, split_rows(songs, artists, given, "artist")):
        sides.setdefault(artist, set()).add(side)
    assert all(len(s) == 1 for s in sides.values())
    assert {side for s in sides.values() for side in s} == {"train", "valid", "test"}


def test_manifest_split_is_used_as_given_and_auto_prefers_it():
    assert resolve_method("auto", any_given=True) == "manifest"
    assert resolve_method("auto", any_given=False) == "song"
    assert list(split_rows(["a", "b", "c"], [None] * 3, ["train", "test", ""], "manifest")) == \
        ["train", "test", None]
    with pytest.raises(ParameterError, match="split"):
        resolve_method("manifest", any_given=False)
    with pytest.raises(ParameterError, match="unknown split"):
        resolve_method("random", any_given=False)
    with pytest.raises(ParameterError, match="artist"):
        split_rows(["a"], [None], [None], "artist")


def test_validation_songs_are_taken_from_the_manifests_train_songs_by_artist():
    songs, artists, _ = _rows(400, artists=60)
    given = ["test" if int(s[4:]) % 4 == 0 else "train" for s in songs]
    artists = [a if int(s[4:]) % 10 else None for s, a in zip(songs, artists)]  # some without
    sides = split_rows(songs, artists, given, VALID_FROM_TRAIN, seed=1, valid=0.2)
    assert list(sides[np.array(given) == "test"]) == ["test"] * given.count("test")
    moved = {s for s, g, side in zip(songs, given, sides) if g == "train" and side == "valid"}
    assert 0.1 < len(moved) / 300 < 0.3
    by_artist = {}
    for artist, g, side in zip(artists, given, sides):
        if artist and g == "train":
            by_artist.setdefault(artist, set()).add(side)
    assert all(len(s) == 1 for s in by_artist.values())  # an artist's train songs stay together
    rule = SplitRule(VALID_FROM_TRAIN, seed=1, valid=0.2)
    assert list(rule.of(songs[::-1], artists[::-1], given[::-1])) == list(sides[::-1])
    assert list(split_rows(songs, artists, given, VALID_FROM_TRAIN, seed=2, valid=0.2)) != \
        list(sides)


def test_cv_folds_never_split_an_artist_or_a_song():
    songs, artists, _ = _rows(300, artists=40)
    artists = [a if int(s[4:]) % 3 else None for s, a in zip(songs, artists)]  # some have none
    first = fold_of(songs, artists, 5, seed=1)
    order = np.random.default_rng(1).permutation(len(songs))  # any order, any batching
    again = np.empty_like(first)
    for chunk in np.array_split(order, 9):
        again[chunk] = fold_of([songs[i] for i in chunk], [artists[i] for i in chunk], 5, seed=1)
    assert list(first) == list(again) and set(first) == {0, 1, 2, 3, 4}
    by_artist, by_song = {}, {}
    for sid, artist, fold in zip(songs, artists, first):
        by_song.setdefault(sid, set()).add(fold)
        if artist:
            by_artist.setdefault(artist, set()).add(fold)
    assert all(len(f) == 1 for f in by_song.values()) and len(by_song) == 300
    assert all(len(f) == 1 for f in by_artist.values()) and len(by_artist) == 40
    assert list(fold_of(songs, artists, 5, seed=2)) != list(first)  # the seed draws anew
    with pytest.raises(ParameterError, match="at least 2 folds"):
        fold_of(songs, artists, 1)
