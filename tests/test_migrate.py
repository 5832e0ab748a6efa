"""`genres migrate`: directories of genres 0.1 (parts + JSON commit records) converted once."""

import datetime
import json

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from pipeline import cli
from pipeline.features import FeatureSpec
from pipeline.storage.shards import ERROR_SCHEMA, FeatureStore, frame_schema, tensor_array


def _old_part(folder, name, table, errors, **record):
    """A part as genres 0.1 wrote it: rows, error rows, then the commit record."""
    (folder / "_commits").mkdir(parents=True, exist_ok=True)
    if table.num_rows:
        pq.write_table(table, folder / f"{name}.parquet")
    if errors.num_rows:
        (folder / "_errors").mkdir(exist_ok=True)
        pq.write_table(errors, folder / "_errors" / f"{name}.parquet")
    ids = sorted(set(table.column("song_id").to_pylist())) if table.num_rows else []
    (folder / "_commits" / f"{name}.json").write_text(json.dumps(
        {"part": name, "rows": table.num_rows, "songs": ids,
         "errors": errors.column("song_id").to_pylist(), **record}))


def test_an_old_feature_directory_is_refused_then_migrated(tmp_path, rng, capsys):
    spec = FeatureSpec(frame_seconds=1.0)
    old = tmp_path / "features"
    old.mkdir()
    schema = frame_schema(spec)
    n = 3
    rows = pa.table({"song_id": ["a", "a", "b"], "frame": [0, 1, 0], "start_s": [0.0, 1.0, 0.0],
                     "label": ["x"] * n, "artist": [None] * n, "split": ["train"] * n,
                     "padded": [False] * n,
                     "mfcc": tensor_array(rng.standard_normal((n, *spec.mfcc_shape)).astype("f4")),
                     "logmel": tensor_array(rng.standard_normal((n, *spec.logmel_shape))
                                            .astype("f4"))}, schema=schema)
    errors = pa.table({"song_id": ["bad"], "uri": ["/bad.wav"], "error": ["decode"],
                       "message": ["not audio"]}, schema=ERROR_SCHEMA)
    # the spec file as 0.1 wrote it
    (old / "_spec.json").write_text(json.dumps(spec.to_record()))
    _old_part(old, "part-00000", rows, errors)
    _old_part(old, "part-00001", rows.slice(0, 0), ERROR_SCHEMA.empty_table())

    assert cli.main(["train", str(old), "--out", str(tmp_path / "m")]) == 2
    assert "genres migrate" in capsys.readouterr().err
    assert cli.main(["migrate", str(old)]) == 0
    store = FeatureStore(str(old))
    assert store.parts() == ["part-00000"]
    index = store.read_index().to_pandas().set_index("song_id")
    assert index.frames.to_dict() == {"a": 2, "b": 1, "bad": 0}
    assert index.error.fillna("").to_dict() == {"a": "", "b": "", "bad": "decode"}
    assert store.read_frames(["song_id"]).num_rows == 3
    assert (old / "_legacy" / "_commits").exists() and not (old / "_commits").exists()
    assert cli.main(["migrate", str(old)]) == 2  # once


def test_old_labels_are_migrated_into_the_delta_table(tmp_path):
    old = tmp_path / "labels"
    at = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)
    schema = pa.schema([("song_id", pa.string()), ("uri", pa.string()), ("genre", pa.string()),
                        ("confidence", pa.float32()),
                        ("probabilities", pa.map_(pa.string(), pa.float32())),
                        ("top_tags", pa.list_(pa.string())), ("n_frames", pa.int32()),
                        ("aggregator", pa.string()), ("model_id", pa.string()),
                        ("scored_at", pa.timestamp("s", tz="UTC"))])
    rows = pa.Table.from_pylist([{"song_id": s, "uri": f"/{s}", "genre": "jazz",
                                  "confidence": 0.9, "probabilities": [("jazz", 0.9)],
                                  "top_tags": ["jazz"], "n_frames": 2, "aggregator": "mean",
                                  "model_id": "m1", "scored_at": at} for s in "ab"], schema=schema)
    errors = pa.table({"song_id": ["c"], "uri": ["/c"], "error": ["missing"],
                       "message": ["gone"]}, schema=ERROR_SCHEMA)
    _old_part(old, "part-00000", rows, errors, model_id="m1", aggregator="mean")
    assert cli.main(["migrate", str(old)]) == 0
    table = DeltaTable(str(old)).to_pandas().set_index("song_id")
    assert table.genre.fillna("").to_dict() == {"a": "jazz", "b": "jazz", "c": ""}
    assert table.error.fillna("").to_dict() == {"a": "", "b": "", "c": "missing"}
    assert set(table.model_id) == {"m1"} and set(table.aggregator) == {"mean"}
    assert not (old / "part-00000.parquet").exists()
    assert (old / "_legacy" / "part-00000.parquet").exists()


def test_migrate_of_a_directory_that_is_not_old_exits_2(tmp_path, capsys):
    assert cli.main(["migrate", str(tmp_path)]) == 2
    assert "nothing to migrate" in capsys.readouterr().err
