"""s3:// catalogs and outputs against a real S3 endpoint over HTTP (moto's server, 127.0.0.1)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from servers import MotoServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_endpoint():
    server = MotoServer()
    yield server.env
    try:
        server.check()  # a server that died mid-test says how
    finally:
        server.stop()


def _bucket_of_songs(s3_endpoint, monkeypatch, tmp_path, bucket: str, prefix: str,
                     names: tuple[str, str], seconds: float, seed: int):
    """A bucket with an Ogg and a FLAC of noise under ``prefix``; its boto3 client. The test's
    environment points at the endpoint."""
    import boto3

    for key, value in s3_endpoint.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"])
    s3.create_bucket(Bucket=bucket)
    rng = np.random.default_rng(seed)
    for name, fmt in zip(names, ("OGG", "FLAC")):
        sf.write(tmp_path / name, (0.1 * rng.standard_normal(int(seconds * 22050))
                                   ).astype(np.float32), 22050, format=fmt)
        s3.upload_file(str(tmp_path / name), bucket, f"{prefix}/{name}")
    return s3


def test_extract_from_and_to_s3(s3_endpoint, tmp_path, monkeypatch):
    s3 = _bucket_of_songs(s3_endpoint, monkeypatch, tmp_path, "music", "catalog/jazz",
                          ("a.ogg", "b.flac"), 7, seed=3)
    s3.put_object(Bucket="music", Key="catalog/jazz/bad.wav", Body=b"RIFF" + bytes(300))
    s3.put_object(Bucket="music", Key="catalog/manifest.csv",
                  Body=b"uri,label\njazz/a.ogg,jazz\njazz/b.flac,jazz\njazz/bad.wav,jazz\n"
                       b"jazz/gone.wav,jazz\n")

    env = {**os.environ, **s3_endpoint, "RAY_ADDRESS": ""}
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "extract",
                             "s3://music/catalog/manifest.csv", "--out", "s3://music/features"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 songs in" in result.stdout and "2 ok" in result.stdout

    from pipeline.storage.shards import FeatureStore

    store = FeatureStore("s3://music/features")
    frames = store.read_frames(["song_id", "frame", "label"]).to_pandas()
    assert frames.groupby("song_id").size().to_dict() == {"jazz/a": 1, "jazz/b": 1}
    errors = store.read_errors().to_pandas().set_index("song_id").error.to_dict()
    assert errors == {"jazz/bad": "decode", "jazz/gone": "missing"}
    assert store.read_spec().frame_seconds == 5.0

    # a re-run finds every song in the songs table on S3: only the missing file (a transient
    # error: it may have arrived) is tried again (at once: no wait between tries)
    again = subprocess.run([sys.executable, "-m", "pipeline.cli", "extract",
                            "s3://music/catalog/manifest.csv", "--out", "s3://music/features",
                            "--retry-after", "0"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "3 already done, 1 tried again, 0 ok, 1 failed (missing=1)" in again.stdout, \
        again.stdout
    assert store.read_errors().num_rows == 2  # a song's latest row only

    # labels: a Delta table on S3, committed by the driver, read by plain deltalake
    tag = [sys.executable, "-m", "pipeline.cli", "tag", "s3://music/catalog/manifest.csv",
           "--tags", "MSD", "--out", "s3://music/labels"]
    first = subprocess.run(tag, env=env, capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "2 labelled, 2 failed" in first.stdout
    second = subprocess.run([*tag, "--retry-after", "0"], env=env, capture_output=True,
                            text=True, timeout=400)
    assert second.returncode == 0 and \
        "3 already labelled, 1 tried again, 0 labelled, 1 failed (missing=1)" in second.stdout, \
        second.stdout

    from deltalake import DeltaTable

    from pipeline.storage.delta import storage_options

    table = DeltaTable("s3://music/labels", storage_options=storage_options("s3://music/labels"))
    rows = table.to_pandas()
    assert sorted(rows.song_id) == ["jazz/a", "jazz/b", "jazz/bad", "jazz/gone", "jazz/gone"]
    assert rows.set_index("song_id").error.fillna("").to_dict() == {
        "jazz/a": "", "jazz/b": "", "jazz/bad": "decode", "jazz/gone": "missing"}
    assert table.version() == 2  # created, one commit per run


def test_a_connection_lost_mid_read_is_an_io_error_and_the_next_run_reads_the_song(
        s3_endpoint, tmp_path, monkeypatch):
    """libsndfile reads S3 objects through Python callbacks that cannot raise: a dropped
    connection read as the end of the file would store half a song. It is an io error (a
    transient kind) instead, and the next run extracts the whole song."""
    _bucket_of_songs(s3_endpoint, monkeypatch, tmp_path, "cut", "songs",
                     ("long.ogg", "other.flac"), 12, seed=4)
    command = [sys.executable, "-m", "pipeline.cli", "extract", "s3://cut/songs",
               "--out", "s3://cut/features"]
    env = {**os.environ, **s3_endpoint, "RAY_ADDRESS": "",
           "GENRES_SONG_LIMITS": "backoff_s=0.2"}
    cut = subprocess.run(command, env={**env, "GENRES_FAULTS": "cutread:long"},
                         capture_output=True, text=True, timeout=300)
    assert cut.returncode == 0, cut.stderr[-2000:]
    assert "2 songs in, 0 already done, 1 ok, 1 failed (io=1)" in cut.stdout, cut.stdout
    again = subprocess.run([*command, "--retry-after", "0"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 songs in, 1 already done, 1 tried again, 1 ok, 0 failed" in again.stdout, \
        again.stdout

    from pipeline.storage.shards import FeatureStore

    store = FeatureStore("s3://cut/features")
    frames = store.read_frames(["song_id"]).to_pandas()
    assert frames.groupby("song_id").size().to_dict() == {"long": 2, "other": 2}  # 12 s: 2x5 s
    assert store.read_errors().num_rows == 0


def test_missing_objects_are_checked_only_for_songs_tried_before(s3_endpoint, tmp_path,
                                                                monkeypatch):
    """In an object store a song tried before is checked up front (one request each, in
    parallel); a new song's object is left to the decoder, which checks as it opens it."""
    from pipeline.storage.audio import missing_files

    _bucket_of_songs(s3_endpoint, monkeypatch, tmp_path, "checks", "songs",
                     ("a.ogg", "b.flac"), 1, seed=5)
    uris = ["s3://checks/songs/a.ogg", "s3://checks/songs/never.ogg",
            "s3://checks/songs/never.ogg", "s3://nobucket/x.ogg"]
    found = missing_files(uris, [2, 2, 0, 1])
    assert [type(e).__name__ if e else None for e in found] == [
        None, "AudioMissingError", None, "AudioMissingError"]
    assert str(found[1]) == "no such file: s3://checks/songs/never.ogg"


def test_delta_commits_on_s3_refuse_a_taken_version(s3_endpoint, monkeypatch):
    """delta-rs commits on moto's S3 server with conditional PUTs: no lock server."""
    import boto3
    import pyarrow as pa

    from pipeline.storage.delta import CommitConflict, DeltaLog, write_file

    for key, value in s3_endpoint.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3", endpoint_url=s3_endpoint["AWS_ENDPOINT_URL"]).create_bucket(
        Bucket="tables")
    log = DeltaLog("s3://tables/table", pa.schema([("song_id", pa.string())]))
    log.create()
    adds = [write_file(log.root, pa.table({"song_id": [s]}), name=s) for s in "ab"]
    assert log.commit([adds[0]], version=0, run_id="r1") == 1
    with pytest.raises(CommitConflict):
        log.commit([adds[1]], version=0, run_id="r2")
    assert log.added_since(0) == (1, [{"path": "s3://tables/table/a.parquet", "partition": {},
                                       "run_id": "r1"}])
    assert log.commit([adds[1]], version=1, run_id="r2") == 2
    assert sorted(log.table().to_pyarrow_table().column("song_id").to_pylist()) == ["a", "b"]
