import pytest

from pipeline.errors import ParameterError
from pipeline.splits import assign_splits


def _songs(n, artists=7):
    return {f"song{i:04d}": {"split": None, "artist": f"artist{i % artists}"} for i in range(n)}


def test_song_split_is_deterministic_and_covers_all():
    songs = _songs(500)
    first, second = assign_splits(songs, "song"), assign_splits(songs, "song")
    assert first == second
    counts = {s: list(first.values()).count(s) for s in ("train", "valid", "test")}
    assert all(c > 0 for c in counts.values()) and sum(counts.values()) == 500
    assert 0.1 < counts["test"] / 500 < 0.3


def test_no_artist_on_both_sides():
    songs = _songs(300, artists=40)
    split = assign_splits(songs, "artist")
    sides = {}
    for sid, side in split.items():
        sides.setdefault(songs[sid]["artist"], set()).add(side)
    assert all(len(s) == 1 for s in sides.values())
    assert {side for s in sides.values() for side in s} == {"train", "valid", "test"}


def test_manifest_split_is_used_as_given_and_auto_prefers_it():
    songs = {"a": {"split": "train"}, "b": {"split": "test"}, "c": {"split": None}}
    assert assign_splits(songs, "auto") == {"a": "train", "b": "test", "c": None}
    with pytest.raises(ParameterError, match="split"):
        assign_splits(_songs(3), "manifest")
    with pytest.raises(ParameterError, match="artist"):
        assign_splits({"a": {"split": None}}, "artist")
