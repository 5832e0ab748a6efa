"""The demo: synthesise a small labelled catalog, then extract -> train -> score on local Ray."""

from __future__ import annotations

import csv
import logging
import os
import shutil

import numpy as np

from pipeline.features import FeatureSpec
from pipeline.storage import fs as fsio

log = logging.getLogger(__name__)

SAMPLE_RATE = 22050
DEMO_MARKER = ".genres-demo"  # in every folder the demo made: the only ones it deletes in
GENRES = ("chords", "drums", "noise")


def _chords(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Sustained harmonic chords changing every 1-2 s (a tonal, 'classical-like' texture)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    y = np.zeros_like(t)
    start = 0.0
    while start < seconds:
        length = rng.uniform(1.0, 2.0)
        root = 110 * 2 ** (rng.integers(0, 24) / 12)
        seg = (t >= start) & (t < start + length)
        tt = t[seg] - start
        env = np.minimum(1, tt / 0.15) * np.exp(-tt / (length * 1.5))
        for interval in (0, 4, 7):
            f0 = root * 2 ** (interval / 12)
            for k in range(1, 6):
                y[seg] += env * np.sin(2 * np.pi * f0 * k * tt + rng.uniform(0, 6.28)) / k
        start += length
    return y


def _drums(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Kick, snare and hi-hat hits on a 90-150 bpm grid (a percussive texture)."""
    n = int(seconds * SAMPLE_RATE)
    y = np.zeros(n)
    beat = 60.0 / rng.uniform(90, 150)
    hit = np.arange(int(0.25 * SAMPLE_RATE)) / SAMPLE_RATE
    kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-hit * 30)) * hit) * np.exp(-hit * 12)
    snare = rng.standard_normal(hit.size) * np.exp(-hit * 25) * 0.6
    hat = np.diff(rng.standard_normal(hit.size + 1)) * np.exp(-hit * 80) * 0.3
    for i, onset in enumerate(np.arange(0, seconds, beat / 2)):
        s = int(onset * SAMPLE_RATE)
        for sound, on in ((kick, i % 4 == 0), (snare, i % 4 == 2), (hat, True)):
            if on:
                e = min(n, s + sound.size)
                y[s:e] += sound[: e - s]
    return y


def _noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Slowly swept filtered noise (a textural, 'ambient-like' sound)."""
    n = int(seconds * SAMPLE_RATE)
    white = rng.standard_normal(n)
    alpha = rng.uniform(0.02, 0.2)
    low = np.empty(n)  # one-pole low-pass, cutoff varied per song
    acc = 0.0
    for i in range(0, n, 512):  # blockwise for speed: a short IIR on each block
        block = white[i:i + 512]
        out = np.empty(block.size)
        for j, v in enumerate(block):
            acc += alpha * (v - acc)
            out[j] = acc
        low[i:i + 512] = out
    sweep = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * np.arange(n) / SAMPLE_RATE)
    return low * sweep


_SYNTHS = {"chords": _chords, "drums": _drums, "noise": _noise}


def synthesise_catalog(root: str, *, songs_per_genre: int = 12, seconds: float = 15.0,
                       seed: int = 0) -> str:
    """Write WAV songs under ``root/<genre>/`` and a manifest with a song-level split.

    Per genre: about 2/3 train, 1/6 valid, 1/6 test. Returns the manifest path.
    """
    import soundfile as sf

    rng = np.random.default_rng(seed)
    rows = []
    n_test = n_valid = max(1, songs_per_genre // 6)
    for genre in GENRES:
        os.makedirs(os.path.join(root, genre), exist_ok=True)
        for i in range(songs_per_genre):
            y = _SYNTHS[genre](rng, seconds)
            y = 0.5 * y / (np.abs(y).max() + 1e-9) * rng.uniform(0.5, 1.0)
            y += 0.003 * rng.standard_normal(y.size)
            rel = f"{genre}/{genre}.{i:03d}.wav"
            sf.write(os.path.join(root, rel), y.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
            split = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
            rows.append({"uri": rel, "label": genre, "split": split})
    manifest = os.path.join(root, "manifest.csv")
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["uri", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def run_demo(workdir: str, *, songs_per_genre: int = 12, epochs: int = 12,
             num_workers: int = 2) -> dict:
    """Synthesise, extract, train and score; returns output locations and song accuracy."""
    import pandas as pd

    from pipeline.runtime.extract import ExtractConfig, run_extract
    from pipeline.runtime.score import ScoreConfig, run_score
    from pipeline.runtime.train import TrainConfig, run_train

    workdir = os.path.abspath(workdir)
    # everything below is deleted or replaced: only in a folder the demo made (or an empty one)
    fsio.check_ours(workdir, DEMO_MARKER, "a genres demo folder")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, DEMO_MARKER), "w") as f:
        f.write("made by `genres demo`: its catalog, features, model, runs and labels\n")
    outputs = {"catalog": os.path.join(workdir, "catalog"),
               "features": os.path.join(workdir, "features"),
               "model": os.path.join(workdir, "model"),
               "labels": os.path.join(workdir, "labels")}
    log.info("demo: synthesising %d songs per genre into %s", songs_per_genre, outputs["catalog"])
    manifest = synthesise_catalog(outputs["catalog"], songs_per_genre=songs_per_genre)
    run_extract(manifest, outputs["features"], FeatureSpec(), ExtractConfig(overwrite=True))
    # the demo trains anew every time: its own run storage, emptied first
    runs = os.path.join(workdir, "train-runs")
    shutil.rmtree(runs, ignore_errors=True)
    trained = run_train(outputs["features"], outputs["model"],
                        TrainConfig(epochs=epochs, num_workers=num_workers, patience=4, batch_size=8),
                        storage_path=runs)
    shutil.rmtree(outputs["labels"], ignore_errors=True)
    scored = run_score(manifest, outputs["labels"], ScoreConfig(model=outputs["model"]))
    from deltalake import DeltaTable

    labels = DeltaTable(outputs["labels"]).to_pandas()  # what any Delta reader sees
    truth = pd.read_csv(manifest)
    truth["song_id"] = truth["uri"].str.rsplit(".", n=1).str[0]
    merged = labels.merge(truth, on="song_id")
    test = merged[merged["split"] == "test"]
    return {"outputs": outputs, "labelled": int(scored["labelled"]),
            "song_accuracy": float((test["genre"] == test["label"]).mean()),
            "train_metrics": trained["metrics"].get("test")}
