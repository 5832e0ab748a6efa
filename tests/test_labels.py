"""Label parts and the latest-label view (no Ray)."""

import datetime

import pandas as pd
import pyarrow as pa

from pipeline import cli
from pipeline.storage.labels import LABEL_SCHEMA, LabelStore
from pipeline.storage.shards import ERROR_SCHEMA


def _rows(songs, genre, model_id, day):
    at = datetime.datetime(2026, 11, day, tzinfo=datetime.timezone.utc)
    return pa.Table.from_pylist(
        [{"song_id": s, "uri": f"/{s}.ogg", "genre": genre, "confidence": 0.9,
          "probabilities": [(genre, 0.9)], "top_tags": [genre], "n_frames": 6,
          "aggregator": "mean", "model_id": model_id, "scored_at": at} for s in songs],
        schema=LABEL_SCHEMA)


def test_latest_label_per_song(tmp_path, capsys):
    store = LabelStore(str(tmp_path / "labels"))
    none = ERROR_SCHEMA.empty_table()
    store.write_part(0, _rows(["a", "b", "c"], "jazz", "m1", 1), none, model_id="m1",
                     aggregator="mean")
    store.write_part(1, _rows(["b", "c"], "rock", "m2", 2), none, model_id="m2", aggregator="mean")
    store.write_part(2, _rows(["c"], "classical", "m2", 2), none, model_id="m2",
                     aggregator="mean")  # same time as part 1: the later part wins
    latest = store.latest().to_pandas().set_index("song_id")
    assert latest.genre.to_dict() == {"a": "jazz", "b": "rock", "c": "classical"}
    assert latest.model_id.to_dict() == {"a": "m1", "b": "m2", "c": "m2"}
    assert list(store.latest("m1").to_pandas().genre) == ["jazz"] * 3
    assert store.latest("nope").num_rows == 0

    out = tmp_path / "latest.csv"
    assert cli.main(["latest", str(tmp_path / "labels"), "--out", str(out)]) == 0
    assert pd.read_csv(out).set_index("song_id").genre.to_dict() == latest.genre.to_dict()
    capsys.readouterr()
    assert cli.main(["latest", str(tmp_path / "labels"), "--model-id", "m2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("song_id,") and len(printed) == 1 + 2  # CSV: header, b, c


def test_latest_of_a_folder_that_is_not_labels_exits_2(tmp_path, capsys):
    assert cli.main(["latest", str(tmp_path)]) == 2
    assert "not a labels directory" in capsys.readouterr().err
