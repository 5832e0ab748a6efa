"""Poison songs cost themselves, not their batch: each song decoded in a child process under
time and memory limits, with bounded retries (faults injected with GENRES_FAULTS)."""

import time

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline import faults
from pipeline.errors import TRANSIENT_KINDS
from pipeline.extract import extract_shard, song_features
from pipeline.features import FeatureSpec
from pipeline.sandbox import Limits, Sandbox
from pipeline.storage.catalog import Song
from pipeline.storage.shards import FeatureStore

SPEC = FeatureSpec(frame_seconds=1.0)


def _wav(path, seconds, rng, sr=22050):
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32), sr)
    return str(path)


@pytest.fixture
def songs(tmp_path, rng):
    names = ["fine-1", "poison", "fine-2", "stuck", "hog", "flaky", "gone-net", "fine-3"]
    return [Song(name, _wav(tmp_path / f"{name}.wav", 2.0, rng)) for name in names]


def test_a_batch_with_poison_songs_loses_only_them(tmp_path, songs, monkeypatch):
    # abort: SIGABRT in the decoder; hang: never returns; hog: memory until stopped;
    # flaky: two connection resets then fine; gone-net: resets on every try
    monkeypatch.setenv(faults.ENV, "abort:poison,hang:stuck,hog:hog,oserror:flaky*2,"
                                   "oserror:gone-net")
    monkeypatch.setenv("GENRES_SONG_LIMITS", "base_s=4,per_audio_s=0,memory_mb=700,"
                                             "backoff_s=0.1")
    out = str(tmp_path / "features")
    store = FeatureStore(out)
    store.prepare(SPEC)
    from pipeline import sandbox as sandbox_module

    monkeypatch.setattr(sandbox_module, "_SANDBOX", None)  # a sandbox with these limits
    started = time.perf_counter()
    summary = extract_shard(songs, SPEC, out, "part-0", run_id="r")
    took = time.perf_counter() - started
    store.commit([summary["add"]], run_id="r")
    frames = pd.read_parquet(tmp_path / "features" / "part-0.parquet")
    assert sorted(frames.song_id.unique()) == ["fine-1", "fine-2", "fine-3", "flaky"]
    errors = store.read_errors().to_pandas().set_index("song_id")
    assert errors.error.to_dict() == {"poison": "crash", "stuck": "timeout", "hog": "oom",
                                      "gone-net": "io"}
    assert "SIGABRT" in errors.message["poison"]
    # bounded: two tries each of the hung song (4 s limit), nothing retried forever
    assert took < 60, took
    assert [k for k in ("crash", "timeout", "oom", "io") if k in TRANSIENT_KINDS] == \
        ["timeout", "io"]
    sandbox_module.sandbox().stop()


def test_the_time_limit_grows_with_the_songs_length(tmp_path, rng, monkeypatch):
    # 1 s base + 0.2 s per audio second: a 30 s song gets 7 s, enough to decode it
    song = Song("long", _wav(tmp_path / "long.wav", 30.0, rng))
    box = Sandbox(Limits(base_s=1.0, per_audio_s=0.2))
    try:
        feats = box.call(song_features, song, SPEC)
        assert feats["mfcc"].shape[0] == 30
    finally:
        box.stop()


def test_a_dead_child_is_replaced_and_the_next_song_decodes(tmp_path, rng, monkeypatch):
    monkeypatch.setenv(faults.ENV, "abort:poison")
    box = Sandbox(Limits(attempts=1))
    try:
        from pipeline.errors import SongCrashError

        with pytest.raises(SongCrashError):
            box.call(song_features, Song("p", _wav(tmp_path / "poison.wav", 1.0, rng)), SPEC)
        first = box.process
        assert first is None or first.poll() is not None
        feats = box.call(song_features, Song("ok", _wav(tmp_path / "ok.wav", 1.0, rng)), SPEC)
        assert feats["logmel"].shape[0] == 1 and box.process.poll() is None
    finally:
        box.stop()
