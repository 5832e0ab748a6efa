"""Faults injected into real runs (`genres extract` on its own local Ray, GENRES_FAULTS): a song
that aborts or hangs its decoder, reads that fail twice or always, a file that arrives late.
Each run exits 0, every song ends in exactly one place, and re-runs complete what is
transient (and, with --retry-errors, everything)."""

import datetime
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from pipeline.storage.shards import FeatureStore

pytestmark = [pytest.mark.slow, pytest.mark.ray]

NAMES = ["fine-1", "fine-2", "fine-3", "poison", "stuck", "flaky", "net"]
START = datetime.datetime.now(datetime.timezone.utc)


def _extract(catalog: str, out: str, *extra: str, faults: str = "",
             hours_later: float = 0) -> subprocess.CompletedProcess:
    """`genres extract` as a fresh process; ``hours_later``: the clock it runs by (run ids,
    the retry schedule) set that far after the test started."""
    now = START + datetime.timedelta(hours=hours_later)
    env = {**os.environ, "RAY_ADDRESS": "", "GENRES_FAULTS": faults,
           "GENRES_SONG_LIMITS": "base_s=5,per_audio_s=0,backoff_s=0.2",
           "GENRES_NOW": now.isoformat()}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "extract", catalog, "--out", out,
                           "--frame-seconds", "1", "--songs-per-task", "16", *extra],
                          env=env, capture_output=True, text=True, timeout=400)


def _where(out: str) -> dict[str, str]:
    """Where each song ended: ``frames`` or its error kind (each song once)."""
    store = FeatureStore(out)
    frames = store.read_frames(["song_id"]).column("song_id").to_pylist()
    errors = store.read_errors().to_pandas()
    where = {**{s: "frames" for s in set(frames)}, **dict(zip(errors.song_id, errors.error))}
    assert len(where) == len(set(frames)) + len(errors), "a song in two places"
    return where


def test_poison_songs_cost_themselves_and_reruns_complete_the_transient(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "catalog"
    root.mkdir()
    for name in NAMES:
        sf.write(root / f"{name}.wav", (0.1 * rng.standard_normal(3 * 22050)).astype(np.float32),
                 22050)
    manifest = root / "manifest.csv"
    manifest.write_text("uri\n" + "".join(f"{n}.wav\n" for n in [*NAMES, "late"]))
    out = str(tmp_path / "features")

    # all eight songs in one task: the poison ones must not take the others down
    first = _extract(str(manifest), out,
                     faults="abort:poison,hang:stuck,oserror:flaky*2,oserror:net")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "8 songs in, 0 already done, 4 ok, 4 failed (crash=1, io=1, missing=1, timeout=1)" \
        in first.stdout, first.stdout
    assert _where(out) == {"fine-1": "frames", "fine-2": "frames", "fine-3": "frames",
                           "flaky": "frames", "poison": "crash", "stuck": "timeout", "net": "io",
                           "late": "missing"}

    # the late file arrives, storage answers, nothing hangs; the same day (10 h later) no
    # transient error is due yet (20 h after a first failure)
    sf.write(root / "late.wav", (0.1 * rng.standard_normal(3 * 22050)).astype(np.float32), 22050)
    early = _extract(str(manifest), out, hours_later=10)
    assert "8 songs in, 8 already done, 0 ok, 0 failed" in early.stdout, early.stdout
    # the next night the transient errors are tried again, the crash is final
    second = _extract(str(manifest), out, hours_later=24)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "8 songs in, 5 already done, 3 tried again, 3 ok, 0 failed" in second.stdout, \
        second.stdout
    assert _where(out) == {**{n: "frames" for n in [*NAMES, "late"]}, "poison": "crash"}

    # --retry-errors tries every failed song: the (no longer poisoned) file decodes
    third = _extract(str(manifest), out, "--retry-errors", hours_later=25)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "8 songs in, 7 already done, 1 tried again, 1 ok, 0 failed" in third.stdout, \
        third.stdout
    assert _where(out) == {n: "frames" for n in [*NAMES, "late"]}
    # each song's frames once: no song was written twice
    frames = FeatureStore(out).read_frames(["song_id", "frame"]).to_pandas()
    assert not frames.duplicated().any() and frames.groupby("song_id").size().eq(3).all()
