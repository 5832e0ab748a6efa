"""The training data plan on Ray Data: splits decided per row, statistics in the cluster."""

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import ParameterError
from pipeline.runtime.train import TrainConfig
from pipeline.storage import shards
from pipeline.runtime.train_data import open_source, plan_training_data
from corpus import tiny_features

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """40 songs of 2 frames in 4 parts, two labels, 8 artists, no manifest split; each song
    in its own row group, so that reads of a split skip the other songs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shards, "_ROW_GROUP_BYTES", 1)
        return tiny_features(tmp_path_factory.mktemp("plan"),
                             [{"song_id": f"s{i:02d}", "seconds": 2.5, "label": "ab"[i % 2],
                               "artist": f"r{i % 8}"} for i in range(40)])


def _songs(data, split):
    rows = data.dataset(split).select_columns(["song_id"]).take_all()
    return [r["song_id"] for r in rows]


@pytest.mark.parametrize("model", ["cnn2d", "mil"])
def test_streamed_splits_keep_every_song_on_one_side(ray_session, features, model):
    data = plan_training_data(open_source(features, TrainConfig(model=model, split="song")),
                              TrainConfig(model=model, split="song"))
    assert data.classes == ("a", "b") and data.method == "song"
    sides = {split: _songs(data, split) for split in ("train", "valid", "test")}
    per_song = {s: set(v) for s, v in sides.items()}
    assert all(per_song.values())
    assert not (per_song["train"] & per_song["valid"] or per_song["train"] & per_song["test"]
                or per_song["valid"] & per_song["test"])
    assert sum(len(s) for s in per_song.values()) == 40
    for split, songs in sides.items():
        counts = data.counts[split]
        assert counts.songs == len(per_song[split]) and counts.frames == 2 * counts.songs
        # frames: a row per frame; mil: one bag per song
        assert len(songs) == (counts.songs if model == "mil" else counts.frames)


def test_artist_split_keeps_every_artist_on_one_side(ray_session, features):
    config = TrainConfig(split="artist", seed=3)
    data = plan_training_data(open_source(features, config), config)
    artist = {f"s{i:02d}": f"r{i % 8}" for i in range(40)}
    sides = {}
    for split in ("train", "valid", "test"):
        for sid in _songs(data, split):
            sides.setdefault(artist[sid], set()).add(split)
    assert all(len(s) == 1 for s in sides.values()) and len(sides) == 8


@pytest.mark.parametrize("model", ["cnn2d", "mil"])
def test_cv_folds_of_streamed_rows_never_split_an_artist_or_a_song(ray_session, features, model):
    from pipeline.splits import fold_of

    config = TrainConfig(model=model, split="song")
    data = plan_training_data(open_source(features, config), config)
    artist = {f"s{i:02d}": f"r{i % 8}" for i in range(40)}
    rows = data.dataset("train", "valid", folds=3).select_columns(["song_id", "fold"]).take_all()
    assert len(rows) == sum(data.examples(s) for s in ("train", "valid"))  # frames, or bags
    folds = {}
    for row in rows:
        folds.setdefault(artist[row["song_id"]], set()).add(row["fold"])
        assert row["fold"] == fold_of([row["song_id"]], [artist[row["song_id"]]], 3)[0]
    assert all(len(f) == 1 for f in folds.values()) and len(set().union(*folds.values())) > 1


@pytest.fixture(scope="module")
def train_test_only(tmp_path_factory):
    """30 songs whose manifest split names train and test only; 10 artists, each on one side."""
    return tiny_features(tmp_path_factory.mktemp("train-test"),
                         [{"song_id": f"t{i:02d}", "seconds": 1.5, "label": "ab"[i % 2],
                           "artist": f"r{i % 10}", "split": "test" if i % 10 < 3 else "train"}
                          for i in range(30)])


def test_validation_songs_come_from_the_train_songs_of_a_train_test_manifest(ray_session,
                                                                             train_test_only):
    config = TrainConfig(model="dnn", valid_fraction=0.3)  # --split auto: the manifest's
    data = plan_training_data(open_source(train_test_only, config), config)
    assert data.method == "manifest+valid" and data.rule.valid == 0.3
    sides = {split: set(_songs(data, split)) for split in ("train", "valid", "test")}
    assert sides["test"] == {f"t{i:02d}" for i in range(30) if i % 10 < 3}
    assert sides["valid"] and sides["train"] and not sides["valid"] & sides["train"]
    assert len(sides["train"]) + len(sides["valid"]) == 21
    artists = {split: {f"r{int(s[1:]) % 10}" for s in songs} for split, songs in sides.items()}
    assert not (artists["train"] & artists["valid"] or artists["valid"] & artists["test"])
    assert data.counts["valid"].songs == len(sides["valid"])
    # balanced class weights from the train frames of each label, counted in the same pass
    frames = {label: n for label, (n, _) in data.train_labels.items()}
    assert set(frames) == {"a", "b"} and sum(frames.values()) == data.counts["train"].frames
    weighted = sum(w * frames[c] for w, c in zip(data.class_weights(), data.classes))
    assert np.isclose(weighted, data.counts["train"].frames)

    # too few train songs for the share: refused, saying how many would do
    config = TrainConfig(model="dnn", valid_fraction=0.01)
    with pytest.raises(ParameterError, match=r"no validation songs.*manifest names no 'valid' "
                                             r"song.*21 train songs.*about 300 are needed"):
        plan_training_data(open_source(train_test_only, config), config)


def test_normalisation_statistics_equal_numpy_on_the_train_frames(ray_session, features):
    config = TrainConfig(split="song")
    data = plan_training_data(open_source(features, config), config)
    train = set(_songs(data, "train"))
    table = pd.read_parquet(features, columns=["song_id", "logmel"])
    x = np.stack([np.asarray(v, np.float64).reshape(128, -1)
                  for v, sid in zip(table.logmel, table.song_id) if sid in train])
    assert data.stats.count == x.shape[0] * x.shape[2]
    assert np.allclose(data.stats.mean, x.mean(axis=(0, 2)), rtol=0, atol=1e-6)
    assert np.allclose(data.stats.std(), x.std(axis=(0, 2)), rtol=1e-6)


def test_pooled_song_statistics_equal_numpy_on_the_train_bags(ray_session, tmp_path):
    from pipeline.features.bags import pool_bags
    from pipeline.features.spec import EmbeddingSpec
    from pipeline.runtime.train_data import song_stats

    # musicnn's pools of 12 noise songs of 1-4 patches, in 3 parts
    features = tiny_features(tmp_path, [{"song_id": f"s{i:02d}", "seconds": 3.0 * (1 + i % 4),
                                         "label": "ab"[i % 2]} for i in range(12)],
                             songs_per_part=4, spec=EmbeddingSpec(pools=True))
    config = TrainConfig(model="embed", head="pooled", feature="pools", split="song",
                         valid_fraction=0.25)
    data = plan_training_data(open_source(features, config), config)
    assert data.level == "song" and data.source.column == "pools"
    stats = song_stats(data)
    bags = data.dataset("train").take_all()
    frames = np.stack([b["frames"] for b in bags])
    pooled = pool_bags((frames - data.stats.mean) / data.stats.scale(),
                       np.stack([b["mask"] for b in bags]))
    assert stats.count == len(bags) == data.counts["train"].songs and pooled.shape[1] == 3012
    assert np.allclose(stats.mean, pooled.mean(0), atol=1e-6)
    assert np.allclose(stats.std(), pooled.std(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cache", [False, True])
def test_streamed_frames_are_the_parts_frames_of_their_song(ray_session, features, cache):
    config = TrainConfig(split="song")
    data = plan_training_data(open_source(features, config), config)
    table = pd.read_parquet(features, columns=["song_id", "label", "logmel"])
    expected = {sid: np.stack([np.asarray(v, np.float32).reshape(128, -1) for v in group.logmel])
                for sid, group in table.groupby("song_id")}
    streamed = {}
    for split in ("train", "valid", "test"):
        for batch in data.dataset(split, cache=cache).iter_batches(batch_size=None,
                                                                     batch_format="numpy"):
            assert batch["x"].dtype == np.float32 and set(batch["split"]) == {split}
            for sid, x, y in zip(batch["song_id"], batch["x"], batch["y"]):
                streamed.setdefault(sid, []).append(x)
                assert data.classes[y] == table.label[table.song_id == sid].iloc[0]
    assert streamed.keys() == expected.keys()
    for sid, frames in streamed.items():  # a song's frames in their order within its part
        assert np.array_equal(np.stack(frames), expected[sid])


@pytest.mark.parametrize("model", ["cnn2d", "mil"])
def test_evaluation_reads_each_song_whole_as_scoring_does(ray_session, features, model):
    """Training's evaluation takes the validation and test songs whole (all their frames, in
    order), read in the actor from the parts, whatever the model's level."""
    import pyarrow as pa

    config = TrainConfig(model=model, split="song")
    data = plan_training_data(open_source(features, config), config)
    parts, (read, kwargs) = data.song_reads("valid", "test")
    songs = {}
    for batch in parts.iter_batches(batch_size=None, batch_format="pyarrow"):
        got = read(pa.Table.from_batches(batch.to_batches()), **kwargs)
        for sid, split, y, x in zip(got["song_id"], got["split"], got["y"], got["x"]):
            assert sid not in songs
            songs[sid] = (split, data.classes[y], x)
    table = pd.read_parquet(features, columns=["song_id", "label", "frame", "logmel"])
    for split in ("valid", "test"):
        mine = {sid for sid, (s, _, _) in songs.items() if s == split}
        assert len(mine) == data.counts[split].songs and set(_songs(data, split)) == mine
    for sid, (_, label, x) in songs.items():
        rows = table[table.song_id == sid].sort_values("frame")
        assert label == rows.label.iloc[0] and x.dtype == np.float32
        assert np.array_equal(x, np.stack([np.asarray(v, np.float32).reshape(x.shape[1:])
                                           for v in rows.logmel]))


def test_a_frame_table_is_cut_between_songs():
    import pyarrow as pa

    from pipeline.runtime.train_data import song_chunks

    ids = [f"s{i % 7}" for i in range(50)]  # songs interleaved, as a table may hold them
    chunks = song_chunks(pa.table({"song_id": ids, "frame": list(range(50))}), 2)
    assert 1 < len(chunks) <= 7 and sum(c.num_rows for c in chunks) == 50
    owners = [set(c.column("song_id").to_pylist()) for c in chunks]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1:])
