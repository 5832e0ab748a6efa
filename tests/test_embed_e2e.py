"""Pretrained musicnn embeddings through the CLI on local Ray: extract -> train embed -> score."""

import json

import numpy as np
import pandas as pd
import pytest

from corpus import current

from pipeline import cli
from pipeline.demo import synthesise_catalog
from pipeline.evaluate import scored_accuracy, simplest_within_one_se
from pipeline.storage.shards import FeatureStore, tensor_values

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed-catalog")
    manifest = synthesise_catalog(str(root), songs_per_genre=6, seconds=9.5, seed=2)
    # as most published splits: train and test only (the validation songs come from train),
    # and an artist per one or two songs, none on both sides
    rows = pd.read_csv(manifest)
    number = rows.uri.str.extract(r"\.(\d+)\.wav$")[0].astype(int)
    rows["split"] = rows.split.replace({"valid": "train"})
    rows["artist"] = rows.label + "-" + ((number + 1) // 2).where(rows.split == "train", 0).astype(str)
    rows = pd.concat([rows, pd.DataFrame([{"uri": "missing.wav", "label": "noise",
                                           "split": "test", "artist": "nobody"}])])
    rows.to_csv(manifest, index=False)
    return manifest


def test_embeddings_train_embed_and_score(ray_session, catalog, tmp_path):
    features, model, labels = (str(tmp_path / n) for n in ("emb", "model", "labels"))
    assert cli.main(["extract", catalog, "--out", features, "--features", "musicnn",
                     "--pools"]) == 0
    store = FeatureStore(features)
    spec = store.read_spec()
    assert spec.kind == "musicnn" and spec.model == "MSD" and spec.weights and spec.pools
    table = store.read_frames()
    assert tensor_values(table.column("embedding")).shape == (18 * 3, 200)  # 9.5 s: 3 patches
    assert tensor_values(table.column("taggram")).shape == (18 * 3, 50)
    assert tensor_values(table.column("pools")).shape == (18 * 3, 1506)  # mean, max pools
    assert list(store.read_errors().to_pandas().song_id) == ["missing"]

    train = ["train", features, "--model", "embed", "--feature", "pools", "--epochs", "6",
             "--batch-size", "8", "--patience", "3", "--valid-fraction", "0.3"]
    assert cli.main([*train, "--out", model, "--num-workers", "1"]) == 0
    bundle = current(tmp_path / "model")
    assert (bundle / "musicnn.npz").exists()
    assert json.loads((bundle / "spec.json").read_text())["kind"] == "musicnn"
    # validation songs were taken from the train songs, by artist, and the bundle says so
    config = json.loads((bundle / "config.json").read_text())
    assert config["split_method"] == "manifest+valid" and config["valid_fraction"] == 0.3
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["test"]["songs"] == 3 and 1 <= metrics["valid"]["songs"] <= 14
    # every head was fitted; on these 15 train and validation songs, 5-fold cross-validation
    # over them (held out by artist) kept the simplest within one standard error of the best,
    # the others shown
    assert config["head_choice"] == "5-fold cross-validation" == metrics["selection"]["by"]
    assert config["head"] == metrics["head"] and metrics["selection"]["songs"] == 15
    assert list(metrics["heads"]) == ["pooled", "logistic", "dense"]  # simplest first
    assert (bundle / "plots" / "heads.png").exists()
    losses = {h: (v["cv_song_log_loss"], v["cv_song_log_loss_se"])
              for h, v in metrics["heads"].items()}
    assert all(v["cv_songs"] == 15 for v in metrics["heads"].values())
    assert metrics["head"] == simplest_within_one_se(losses)
    base = metrics["baseline"]  # the logistic head, beside the kept one
    assert base["head"] == "logistic" and base["valid"]["baseline"] == scored_accuracy(
        metrics["heads"]["logistic"]["valid_song_accuracy"])
    assert base["test"]["margin"] == pytest.approx(
        scored_accuracy(metrics["test"]["song_accuracy"]) - base["test"]["baseline"])
    assert list(metrics["heads"]["pooled"]["valid_song_accuracy"]) == ["pooled"]  # songs
    assert json.loads((bundle / "bundle.json").read_text())["feature"] == "pools"
    # its confidences would be calibrated on the 15 songs' out-of-fold probabilities (fewer
    # than 30: left as they are), and the bundle carries that
    calibration = json.loads((bundle / "calibration.json").read_text())
    assert calibration["temperature"] == metrics["calibration"]["temperature"] == 1.0
    assert calibration["songs"] == 15 and calibration["fitted_on"].startswith("none: fewer")
    assert metrics["calibration"]["cv"]["ece_before"] >= 0  # the out-of-fold songs' figures
    assert calibration["aggregator"] == ("pooled" if metrics["head"] == "pooled" else "mean")
    assert "calibration.json" in json.loads((bundle / "bundle.json").read_text())["files"]
    assert (bundle / "plots" / "reliability.png").exists()
    # the kept head scores the feature directory as it scored its test songs (calibration
    # keeps each song's winner)
    assert cli.main(["score", features, "--model", model, "--out", labels]) == 0
    scored = _merged(labels, catalog)
    test = scored.query("split == 'test'")
    assert len(test) == 3 and (test.genre == test.label).mean() == scored_accuracy(
        metrics["test"]["song_accuracy"])
    # and scores the audio the same: the same winners and (calibrated) probabilities
    audio = str(tmp_path / "model-from-audio")
    assert cli.main(["score", catalog, "--model", model, "--out", audio]) == 0
    both = scored.merge(_merged(audio, catalog), on="song_id", suffixes=("", "_audio"))
    assert len(both) == 18 and (both.genre == both.genre_audio).all()
    for a, b in zip(both.probabilities, both.probabilities_audio):  # [(genre, p), ...]
        assert [g for g, _ in a] == [g for g, _ in b]
        np.testing.assert_allclose([p for _, p in a], [p for _, p in b], atol=2e-3)
        assert abs(sum(p for _, p in a) - 1) < 1e-4

    # the other level's head (songs: pooled; patches: logistic) on 2 workers, then scoring
    # from audio: musicnn's pools through that head
    other = "logistic" if metrics["head"] == "pooled" else "pooled"
    again, audio_labels = str(tmp_path / "again"), str(tmp_path / "audio-labels")
    assert cli.main([*train, "--out", again, "--num-workers", "2", "--head", other]) == 0
    bundle = current(tmp_path / "again")
    assert json.loads((bundle / "config.json").read_text())["head_choice"] == "given"
    level = json.loads((bundle / "bundle.json").read_text())["level"]
    assert level == ("song" if other == "pooled" else "frame")
    assert cli.main(["score", catalog, "--model", again, "--out", audio_labels]) == 0
    merged = _merged(audio_labels, catalog)
    assert len(merged) == 18 and (merged.n_frames == 3).all()
    assert (merged.aggregator == ("pooled" if other == "pooled" else "mean")).all()
    test = merged[merged.split == "test"]
    assert (test.genre == test.label).mean() >= 2 / 3


def _merged(labels: str, catalog: str) -> pd.DataFrame:
    """The label rows of a labels table beside the catalog's manifest rows."""
    truth = pd.read_csv(catalog)
    truth["song_id"] = truth["uri"].str.rsplit(".", n=1).str[0]
    return _labels(labels).merge(truth, on="song_id")


def _labels(path: str) -> pd.DataFrame:
    """The label rows of a labels table, read as any Delta reader would."""
    from deltalake import DeltaTable

    rows = DeltaTable(path).to_pandas()
    return rows[rows.error.isna()]


def test_zero_shot_tags(ray_session, catalog, tmp_path):
    from pipeline.storage.weights import read_tags

    labels = str(tmp_path / "tags")
    assert cli.main(["score", catalog, "--tags", "MTT", "--top-k", "5", "--out", labels]) == 0
    out = _labels(labels).reset_index(drop=True)
    tags = set(read_tags("MTT"))
    assert len(out) == 18 and out.model_id.str.startswith("musicnn-MTT-").all()
    assert all(len(t) == 5 and set(t) <= tags for t in out.top_tags)
    assert all(g == t[0] for g, t in zip(out.genre, out.top_tags))
    probs = dict(out.probabilities[0])
    assert set(probs) == tags and all(0 <= p <= 1 for p in probs.values())
