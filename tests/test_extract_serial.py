"""Extraction without Ray: the serial unit, its parts, index and error rows, and commits."""

import json

import numpy as np
import pandas as pd
import pytest
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from pipeline.extract import extract_shard
from pipeline.features import FeatureSpec
from pipeline.storage.catalog import Song
from pipeline.storage import shards
from pipeline.storage.shards import FeatureStore, tensor_values

SPEC = FeatureSpec(frame_seconds=1.0)
RUN = "test-run"


def _extract(songs, spec, out, part="part-0"):
    """The serial unit, then a commit of its part (what a run's driver does)."""
    summary = extract_shard(songs, spec, out, part, run_id=RUN)
    FeatureStore(out).commit([summary["add"]], run_id=RUN)
    return summary


def _wav(path, seconds, rng, sr=22050, channels=1):
    y = (0.1 * rng.standard_normal((int(seconds * sr), channels))).astype(np.float32)
    sf.write(path, y, sr)
    return str(path)


def test_shard_rows_errors_and_commit(tmp_path, rng):
    songs = [Song("ok", _wav(tmp_path / "ok.wav", 3.2, rng), label="a", split="train"),
             Song("stereo44k", _wav(tmp_path / "s.wav", 2.0, rng, sr=44100, channels=2)),
             Song("short", _wav(tmp_path / "short.wav", 0.5, rng)),
             Song("text", str(tmp_path / "text.mp3")),
             Song("missing", str(tmp_path / "missing.wav"))]
    (tmp_path / "text.mp3").write_text("not audio at all")
    out = str(tmp_path / "features")
    store = FeatureStore(out)
    store.prepare(SPEC)
    summary = _extract(songs, SPEC, out)
    assert summary["ok"] == 3 and summary["errors"] == {"decode": 1, "missing": 1}
    frames = pd.read_parquet(tmp_path / "features" / "part-0.parquet")
    assert frames.groupby("song_id").size().to_dict() == {"ok": 3, "stereo44k": 2, "short": 1}
    assert frames.set_index("song_id").loc["short", "padded"]
    errors = store.read_errors().to_pandas()
    assert sorted(errors.song_id) == ["missing", "text"]
    assert all(errors.message.str.len() > 10)
    # every song is in exactly one place
    assert set(frames.song_id) | set(errors.song_id) == {s.song_id for s in songs}
    assert not set(frames.song_id) & set(errors.song_id)
    index = store.read_index().to_pandas().set_index("song_id")
    assert set(index.index) == {s.song_id for s in songs}
    assert index.frames.to_dict() == {"ok": 3, "stereo44k": 2, "short": 1, "text": 0,
                                      "missing": 0}
    assert index.part.dropna().unique().tolist() == ["part-0"] and store.parts() == ["part-0"]
    assert index.uri["ok"] == songs[0].uri
    # plain pyarrow sees the Arrow-native tensor shape
    table = pq.read_table(tmp_path / "features" / "part-0.parquet")
    assert tensor_values(table.column("logmel")).shape == (6, 128, SPEC.frame_columns)


def test_an_uncommitted_part_is_invisible(tmp_path, rng):
    out = str(tmp_path / "features")
    store = FeatureStore(out)
    store.prepare(SPEC)
    summary = extract_shard([Song("a", _wav(tmp_path / "a.wav", 2.0, rng))], SPEC, out, "part-0",
                            run_id=RUN)  # as if killed before its commit
    assert (tmp_path / "features" / "part-0.parquet").exists()
    assert store.parts() == [] and store.read_index().num_rows == 0
    store.commit([summary["add"]], run_id=RUN)
    assert store.parts() == ["part-0"] and store.read_index().num_rows == 1


def test_a_part_without_some_songs(tmp_path, rng):
    out = str(tmp_path / "features")
    store = FeatureStore(out)
    store.prepare(SPEC)
    songs = [Song(s, _wav(tmp_path / f"{s}.wav", 2.0, rng)) for s in "abc"]
    songs.append(Song("gone", str(tmp_path / "gone.wav")))
    add = extract_shard(songs, SPEC, out, "part-0", run_id=RUN)["add"]
    assert store.without_songs(add, {"x"}, name="part-1", run_id=RUN) is add
    other = extract_shard([Song("d", _wav(tmp_path / "d.wav", 2.0, rng))], SPEC, out, "part-9",
                          run_id=RUN)["add"]
    both = store.combine([add, other], name="index-1")  # a commit's index files as one
    assert json.loads(both["counts"]) == {"ok": 4, "frames": 8, "errors": {"missing": 1}}
    smaller = store.without_songs(both, {"b", "gone"}, name="index-2", run_id=RUN)
    store.commit([smaller], run_id=RUN)
    assert store.parts() == ["part-0-index-2", "part-9"]  # part-0 rewritten without b
    assert sorted(store.read_index().column("song_id").to_pylist()) == ["a", "c", "d"]
    assert set(store.read_frames(["song_id"]).column(0).to_pylist()) == {"a", "c", "d"}
    assert store.without_songs(smaller, {"a", "c", "d"}, name="index-3", run_id=RUN) is None


def test_every_song_of_a_broken_corpus_is_accounted_for(tmp_path):
    from corpus import make_corpus
    from pipeline.storage.catalog import load_catalog

    manifest, expected = make_corpus(tmp_path / "corpus")
    out = str(tmp_path / "features")
    spec = FeatureSpec()
    FeatureStore(out).prepare(spec)
    summary = _extract(load_catalog(str(manifest)), spec, out)
    frames = pd.read_parquet(f"{out}/part-0.parquet", columns=["song_id", "padded"])
    errors = FeatureStore(out).read_errors().to_pandas()
    assert set(frames.song_id) == {k for k, v in expected.items() if v is None}
    assert dict(zip(errors.song_id, errors.error)) == {k: v for k, v in expected.items() if v}
    assert summary["songs"] == len(expected) == frames.song_id.nunique() + len(errors)
    assert frames.groupby("song_id").padded.first().to_dict() == \
        {"good": False, "clip": True, "six96k": False, "low8k": False}


def test_a_shard_of_only_failures_commits_its_error_rows(tmp_path):
    out = str(tmp_path / "features")
    FeatureStore(out).prepare(SPEC)
    summary = _extract([Song("gone", str(tmp_path / "gone.wav"))], SPEC, out)
    assert summary == {**summary, "ok": 0, "frames": 0, "errors": {"missing": 1}}
    assert FeatureStore(out).read_index().column("song_id").to_pylist() == ["gone"]


@pytest.mark.parametrize("settings", [
    {"n_mfcc": 13, "n_mels": 96}, {"n_mfcc": 40}, {"n_mfcc": 80, "n_mels": 96},
    {"sample_rate": 16000, "n_fft": 512, "hop_length": 256, "n_mels": 96},
    {"dtype": "float16"}, {"frame_seconds": 0.1, "hop_seconds": 0.05},
])
def test_spec_variants_write_their_shapes(tmp_path, rng, settings):
    spec = FeatureSpec(**settings)
    out = str(tmp_path / "features")
    FeatureStore(out).prepare(spec)
    _extract([Song("a", _wav(tmp_path / "a.wav", 1.2, rng))], spec, out)
    table = FeatureStore(out).read_frames()
    mfcc, logmel = tensor_values(table.column("mfcc")), tensor_values(table.column("logmel"))
    assert mfcc.shape[1:] == spec.mfcc_shape and logmel.shape[1:] == spec.logmel_shape
    assert mfcc.dtype == np.dtype(spec.dtype) and np.isfinite(logmel).all()
    assert table.schema.metadata[b"genres.spec_fingerprint"].decode() == spec.fingerprint()
    assert FeatureStore(out).read_spec() == spec


def test_a_part_keeps_each_song_in_its_own_row_groups(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(shards, "_ROW_GROUP_BYTES", 70_000)  # under 3 frames of ~26 KB
    seconds = {"a": 3.2, "b": 1.0, "c": 2.0, "d": 1.0}  # 3, 1, 2, 1 frames of ~43 KB
    out = str(tmp_path / "features")
    store = FeatureStore(out)
    store.prepare(SPEC)
    _extract([Song(s, _wav(tmp_path / f"{s}.wav", t, rng)) for s, t in seconds.items()],
             SPEC, out)
    file = pq.ParquetFile(tmp_path / "features" / "part-0.parquet")
    groups = [set(file.read_row_group(i, columns=["song_id"]).column(0).to_pylist())
              for i in range(file.num_row_groups)]
    assert groups == [{"a"}, {"b", "c"}, {"d"}]  # whole songs, closed past the size
    read = store.read_part("part-0", ["song_id", "logmel"],
                           where=lambda keys: np.isin(keys.column("song_id"), ["c"]),
                           where_columns=["song_id"])
    assert read.column("song_id").to_pylist() == ["b", "c", "c"]  # c's group, unfiltered
    whole = store.read_part("part-0", ["song_id", "logmel"])
    assert np.array_equal(tensor_values(read.column("logmel")),
                          tensor_values(whole.column("logmel"))[3:6])
    nothing = store.read_part("part-0", ["song_id", "logmel"],
                              where=lambda keys: np.zeros(keys.num_rows, bool),
                              where_columns=["song_id"])
    assert nothing.num_rows == 0 and nothing.schema == whole.schema
    most = store.read_part("part-0", ["song_id", "logmel"],
                           where=lambda keys: np.isin(keys.column("song_id"), ["a", "c"]),
                           where_columns=["song_id"])
    assert most.equals(whole)  # 2 of 3 groups: one read of the whole part is cheaper


def test_tensor_rows_copies_the_chosen_rows_of_every_chunk(rng):
    x = rng.standard_normal((10, 4, 5)).astype(np.float32)
    column = pa.chunked_array([shards.tensor_array(x[:3]), shards.tensor_array(x[3:3]),
                               shards.tensor_array(x[3:])])
    keep = np.array([1, 0, 1, 1, 0, 0, 1, 1, 1, 0], bool)
    assert np.array_equal(shards.tensor_rows(column, keep), x[keep])
    half = shards.tensor_rows(column, keep, np.float16)
    assert half.dtype == np.float16 and np.array_equal(half, x[keep].astype(np.float16))
    assert shards.tensor_rows(column, np.zeros(10, bool)).shape == (0, 4, 5)


@pytest.mark.parametrize("n,cpus,size", [(300, 2, 30), (128, 2, 16), (1, 2, 1), (5, 4, 1),
                                         (10_000, 100, 25), (100_000, 2, 32)])
def test_tasks_fill_every_cpu_in_each_round(n, cpus, size):
    from pipeline.runtime.cluster import plan_batches

    assert plan_batches(n, cpus) == size
