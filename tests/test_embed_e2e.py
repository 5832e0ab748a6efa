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
    with open(manifest, "a") as f:
        f.write("missing.wav,noise,test\n")
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

    assert cli.main(["train", features, "--out", model, "--model", "embed", "--epochs", "15",
                     "--batch-size", "8", "--patience", "5", "--num-workers", "2"]) == 0
    assert (current(tmp_path / "model") / "musicnn.npz").exists()
    assert json.loads((current(tmp_path / "model") / "spec.json").read_text())["kind"] == "musicnn"

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
