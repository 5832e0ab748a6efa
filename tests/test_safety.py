"""Safe defaults: URI schemes a catalog may name, no secrets in what is stored or said, and no
folder removed that this project did not create (no Ray, no TensorFlow)."""

import datetime
import pathlib

import numpy as np
import pytest
import soundfile as sf

from pipeline import cli
from pipeline.errors import AudioUriError, ParameterError
from pipeline.extract import extract_shard
from pipeline.features import FeatureSpec
from pipeline.storage import fs as fsio
from pipeline.storage.audio import load_audio
from pipeline.storage.catalog import Song
from pipeline.storage.labels import label_rows
from pipeline.storage.shards import FeatureStore

SECRET = "X-Amz-Signature=c2VjcmV0LXNpZ25hdHVyZQ"


def test_redact_drops_query_strings_fragments_and_passwords():
    assert fsio.redact(f"https://u:pw@cdn.example/a.mp3?{SECRET}#t=3") == \
        "https://cdn.example/a.mp3?..."
    assert fsio.redact("s3://bucket/a b.ogg") == "s3://bucket/a b.ogg"
    assert fsio.redact("/music/a.wav") == "/music/a.wav"


def test_only_local_files_and_object_stores_are_read_unless_asked(monkeypatch):
    monkeypatch.setenv(fsio.SCHEMES_ENV, "")  # restored after the test
    for uri in ("/a.wav", "file:///a.wav", "s3://b/a.wav", "gs://b/a.wav", "abfs://c/a.wav"):
        assert fsio.scheme_problem(uri) is None, uri
    problem = fsio.scheme_problem(f"http://169.254.169.254/latest?{SECRET}")
    assert "http:// is not allowed" in problem and "--allow-http" in problem
    assert SECRET not in problem
    assert "ftp:// is not allowed" in fsio.scheme_problem("ftp://host/a.wav")
    with pytest.raises(AudioUriError):  # refused before any connection is tried
        load_audio("https://127.0.0.1:1/a.mp3", sample_rate=22050)
    monkeypatch.setenv(fsio.SCHEMES_ENV, "file,s3,http,https")
    assert fsio.scheme_problem("https://cdn.example/a.mp3") is None


def test_allow_http_reaches_the_environment_the_workers_get(monkeypatch, tmp_path):
    from pipeline.runtime.session import runtime_env

    monkeypatch.setenv(fsio.SCHEMES_ENV, "")  # restored after the test
    # the command fails early (no such catalog) but after reading its flags
    assert cli.main(["extract", str(tmp_path / "none.csv"), "--out", str(tmp_path / "f"),
                     "--allow-http"]) == 2
    assert {"http", "https", "s3"} <= set(fsio.allowed_schemes())
    assert runtime_env()["env_vars"][fsio.SCHEMES_ENV].endswith("http,https")


def test_an_http_song_becomes_an_error_row_and_no_signature_is_stored(tmp_path, monkeypatch,
                                                                      rng):
    monkeypatch.setenv(fsio.SCHEMES_ENV, "")  # restored after the test
    wav = tmp_path / "ok.wav"
    sf.write(wav, (0.1 * rng.standard_normal(3 * 22050)).astype(np.float32), 22050)
    out = str(tmp_path / "features")
    FeatureStore(out).prepare(FeatureSpec(frame_seconds=1.0))
    songs = [Song("ok", str(wav)), Song("web", f"http://cdn.example/a.mp3?{SECRET}"),
             Song("gone", f"{tmp_path}/gone.wav?{SECRET}")]
    summary = extract_shard(songs, FeatureSpec(frame_seconds=1.0), out, "part-0", run_id="r")
    assert summary["ok"] == 1
    FeatureStore(out).commit([summary["add"]], run_id="r")
    index = FeatureStore(out).read_index().to_pandas().set_index("song_id")
    assert index.loc["web", "error"] == "uri" and "--allow-http" in index.loc["web", "message"]
    assert index.loc["gone", "error"] == "missing"
    for path in pathlib.Path(out).rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    rows = label_rows({"song_id": ["web"], "uri": [f"http://cdn.example/a.mp3?{SECRET}"],
                       "error": ["uri"], "message": ["not allowed"], "genre": [""],
                       "confidence": [0.0], "n_frames": [0],
                       "probabilities": np.zeros((1, 2), np.float32)},
                      classes=["a", "b"], top_k=1, aggregator="mean", run_id="r",
                      scored_at=datetime.datetime.now(datetime.timezone.utc))
    assert rows.column("uri").to_pylist() == ["http://cdn.example/a.mp3?..."]


def test_no_folder_of_someone_else_is_removed(tmp_path, capsys):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(ParameterError, match="not a feature directory"):
        FeatureStore(str(foreign)).prepare(FeatureSpec(), overwrite=True)
    with pytest.raises(ParameterError, match="not a model bundle"):
        fsio.check_ours(str(foreign), "bundle.json", "a model bundle")
    # from the command line: exit 2, one line, the folder untouched
    song = tmp_path / "a.wav"
    sf.write(song, np.zeros(22050, np.float32), 22050)
    assert cli.main(["extract", str(song), "--out", str(foreign), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is left alone" in err[0], err
    assert (foreign / "thesis.tex").read_text() == "years of work"
    # an empty folder, or one of ours, may be replaced
    (tmp_path / "empty").mkdir()
    fsio.check_ours(str(tmp_path / "empty"), "bundle.json", "a model bundle")
    ours = str(tmp_path / "features")
    FeatureStore(ours).prepare(FeatureSpec())
    FeatureStore(ours).prepare(FeatureSpec(frame_seconds=1.0), overwrite=True)
    assert FeatureStore(ours).read_spec().frame_seconds == 1.0
