"""Pretrained musicnn embeddings through the CLI on local Ray: extract -> train embed -> score."""

import json

import pandas as pd
import pytest

from corpus import current

from pipeline import cli
from pipeline.demo import synthesise_catalog
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
    assert cli.main(["extract", catalog, "--out", features, "--features", "musicnn"]) == 0
    store = FeatureStore(features)
    spec = store.read_spec()
    assert spec.kind == "musicnn" and spec.model == "MSD" and spec.weights
    table = store.read_frames()
    assert tensor_values(table.column("embedding")).shape == (18 * 3, 200)  # 9.5 s: 3 patches
    assert tensor_values(table.column("taggram")).shape == (18 * 3, 50)
    assert list(store.read_errors().to_pandas().song_id) == ["missing"]

    assert cli.main(["train", features, "--out", model, "--model", "embed", "--epochs", "10",
                     "--batch-size", "8", "--patience", "4", "--num-workers", "2",
                     "--valid-fraction", "0.3"]) == 0
    bundle = current(tmp_path / "model")
    assert (bundle / "musicnn.npz").exists()
    assert json.loads((bundle / "spec.json").read_text())["kind"] == "musicnn"
    # validation songs were taken from the train songs, by artist, and the bundle says so
    config = json.loads((bundle / "config.json").read_text())
    assert config["split_method"] == "manifest+valid" and config["valid_fraction"] == 0.3
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["test"]["songs"] == 3 and 1 <= metrics["valid"]["songs"] <= 14
    # both heads were fitted; the better on the validation songs was kept, the other shown
    assert config["head_choice"] == "validation" and config["head"] == metrics["head"]
    assert set(metrics["heads"]) == {"logistic", "dense"} and (bundle / "plots" / "heads.png").exists()
    kept = metrics["heads"][metrics["head"]]["valid_song_accuracy"]["mean"]
    assert kept == max(h["valid_song_accuracy"]["mean"] for h in metrics["heads"].values())

    assert cli.main(["score", catalog, "--model", model, "--out", labels]) == 0
    out = _labels(labels)
    truth = pd.read_csv(catalog)
    truth["song_id"] = truth["uri"].str.rsplit(".", n=1).str[0]
    merged = out.merge(truth, on="song_id")
    assert len(merged) == 18 and (merged.n_frames == 3).all()
    test = merged[merged.split == "test"]
    assert (test.genre == test.label).mean() >= 2 / 3


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
