"""The labels Delta table and its commits, without Ray: rows, readers, latest, concurrency."""

import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from pipeline.errors import CatalogError
from pipeline.storage.delta import Committer, new_run_id
from pipeline.storage.labels import FILE_SCHEMA, LabelTable, label_rows, latest_of

CLASSES = ["jazz", "rock"]


def _scored(songs, genre="jazz", failed=()):
    n = len(songs)
    probs = np.tile(np.array([[0.8, 0.2]] if genre == "jazz" else [[0.3, 0.7]], np.float32),
                    (n, 1))
    return {"song_id": np.array(songs, dtype=object),
            "uri": np.array([f"/{s}.ogg" for s in songs], dtype=object),
            "error": np.array(["decode" if s in failed else "" for s in songs], dtype=object),
            "message": np.array(["bad file" if s in failed else "" for s in songs], dtype=object),
            "genre": np.array([genre] * n, dtype=object),
            "confidence": probs.max(axis=1), "n_frames": np.full(n, 6, np.int32),
            "probabilities": probs}


def _rows(songs, genre="jazz", day=1, run="r1", failed=()):
    at = datetime.datetime(2026, 11, day, tzinfo=datetime.timezone.utc)
    return label_rows(_scored(songs, genre, failed), classes=CLASSES, top_k=1,
                      aggregator="mean", scored_at=at, run_id=run)


def _commit(table, rows, model_id, run):
    add = table.write(rows, model_id=model_id, name=f"part-{run}-{model_id}")
    return table.log.commit([add], version=table.log.version(), run_id=run)


def test_label_rows_hold_labels_and_errors(tmp_path):
    rows = _rows(["a", "b", "c"], failed={"b"})
    assert rows.schema == FILE_SCHEMA
    out = rows.to_pylist()
    assert out[0]["genre"] == "jazz" and out[0]["top_tags"] == ["jazz"]
    assert dict(out[0]["probabilities"]) == pytest.approx({"jazz": 0.8, "rock": 0.2})
    assert out[1]["genre"] is None and out[1]["probabilities"] is None
    assert (out[1]["error"], out[1]["message"]) == ("decode", "bad file")
    assert out[2]["error"] is None and out[2]["run_id"] == "r1"


def test_a_table_any_delta_reader_reads(tmp_path):
    table = LabelTable(str(tmp_path / "labels"))
    table.create()
    table.create()  # idempotent
    add = table.write(_rows(["a", "b"], failed={"b"}), model_id="m1", name="part-x")
    assert DeltaTable(table.root).to_pandas().empty  # written, not committed: invisible
    assert table.log.commit([add], version=0, run_id="r1") == 1
    assert (tmp_path / "labels" / "model_id=m1" / "part-x.parquet").exists()
    frame = DeltaTable(table.root).to_pandas()  # deltalake + pandas, not this package
    assert sorted(frame.song_id) == ["a", "b"] and set(frame.model_id) == {"m1"}
    assert frame.set_index("song_id").error.isna().to_dict() == {"a": True, "b": False}
    assert table.done_files("m1") == [str(tmp_path / "labels" / "model_id=m1" / "part-x.parquet")]
    assert table.done_files("m2") == []
    history = DeltaTable(table.root).history()
    assert history[0]["genres.run_id"] == "r1"


def test_a_commit_on_a_taken_version_is_refused(tmp_path):
    from pipeline.storage.delta import CommitConflict

    table = LabelTable(str(tmp_path / "labels"))
    table.create()
    first = table.write(_rows(["a"]), model_id="m1", name="one")
    second = table.write(_rows(["b"]), model_id="m1", name="two")
    table.log.commit([first], version=0, run_id="r1")
    with pytest.raises(CommitConflict):
        table.log.commit([second], version=0, run_id="r2")
    latest, added = table.log.added_since(0)
    assert latest == 1 and added[0]["run_id"] == "r1"
    assert added[0]["path"].endswith("model_id=m1/one.parquet")


def test_overlapping_runs_commit_each_song_once(tmp_path):
    """Two runs labelling the same songs: whoever commits second drops its copies first."""
    table = LabelTable(str(tmp_path / "labels"))
    table.create()
    runs = {name: Committer(table.log, run_id=name, version=0, every_files=1,
                            resolve=_resolve(table), relevant=lambda add: True)
            for name in ("A", "B")}
    files = {name: [table.write(_rows(songs, run=name), model_id="m1", name=f"{name}{i}")
                    for i, songs in enumerate([["a", "b"], ["c", "d"], ["e"]])]
             for name in runs}
    runs["A"].add([files["A"][0]])  # A: a, b
    runs["B"].add([files["B"][0]])  # B saw A's a, b: nothing left of its first file
    runs["B"].add([files["B"][1]])  # B: c, d
    runs["A"].add([files["A"][1]])  # A: c, d taken by B
    runs["A"].add([files["A"][2]])  # A: e
    runs["B"].add([files["B"][2]])  # B: e taken by A
    frame = DeltaTable(table.root).to_pandas()
    assert sorted(frame.song_id) == ["a", "b", "c", "d", "e"]
    assert frame.groupby("run_id").song_id.apply(sorted).to_dict() == {
        "A": ["a", "b", "e"], "B": ["c", "d"]}
    assert runs["A"].totals["labelled"] == 3 and runs["B"].totals["labelled"] == 2


def _resolve(table, read: list | None = None):
    """A Committer's resolve, in this process (runs use Ray tasks for it): it keeps the song
    ids of the files it is handed, each handed once (``read`` lists them)."""
    ids = set()

    def resolve(pending, theirs):
        for add in theirs:
            if read is not None:
                read.append(add["path"])
            ids.update(pd.read_parquet(add["path"], columns=["song_id"]).song_id)
        out = [table.without_songs(add, ids, name=f"{add['path'].rsplit('/', 1)[1][:-8]}-r",
                                   model_id="m1") for add in pending]
        return [add for add in out if add is not None]
    return resolve


def test_a_run_is_handed_each_file_of_another_run_once(tmp_path):
    table = LabelTable(str(tmp_path / "labels"))
    table.create()
    read = []
    mine = Committer(table.log, run_id="A", version=0, every_files=1,
                     resolve=_resolve(table, read))
    other = Committer(table.log, run_id="B", version=0, every_files=1, resolve=_resolve(table))
    other.add([table.write(_rows(["a", "b"], run="B"), model_id="m1", name="B0")])
    for i in range(5):  # B's file was committed before A's first commit; A commits 5 times
        mine.add([table.write(_rows([f"s{i}", "a"], run="A"), model_id="m1", name=f"A{i}")])
    assert len(read) == 1 and read[0].endswith("B0.parquet")
    frame = DeltaTable(table.root).to_pandas()
    assert sorted(frame.song_id) == ["a", "b", "s0", "s1", "s2", "s3", "s4"]  # a once, B's


def test_latest_of_keeps_the_most_recent_row_per_song():
    rows = pa.concat_tables([_rows(["a", "b", "c"], "jazz", day=1, run="1"),
                             _rows(["b", "c"], "rock", day=2, run="2"),
                             _rows(["c"], "jazz", day=2, run="3")])  # same time: later run
    latest = latest_of(rows).to_pandas().set_index("song_id")
    assert latest.genre.to_dict() == {"a": "jazz", "b": "rock", "c": "jazz"}
    assert latest.run_id.to_dict() == {"a": "1", "b": "2", "c": "3"}


def test_run_ids_sort_by_start_time():
    first = new_run_id()
    assert first[:8].isdigit() and new_run_id() != first


def test_labels_of_an_earlier_genres_are_refused_with_the_fix(tmp_path):
    (tmp_path / "old" / "_commits").mkdir(parents=True)
    with pytest.raises(CatalogError, match="genres migrate"):
        LabelTable(str(tmp_path / "old")).create()
    with pytest.raises(CatalogError, match="not a labels table"):
        LabelTable(str(tmp_path / "nothing")).check_exists()


def test_a_table_of_an_earlier_genres_gets_the_attempt_column_and_old_rows_read_null(tmp_path):
    from pipeline.storage.delta import DeltaLog, write_file
    from pipeline.storage.labels import LABEL_SCHEMA, PARTITION_BY

    root = str(tmp_path / "labels")
    old_schema = pa.schema([f for f in LABEL_SCHEMA if f.name != "attempt"])
    old = DeltaLog(root, old_schema, PARTITION_BY)
    old.create()
    rows = _rows(["a"]).drop_columns(["attempt"])
    add = write_file(root, rows, name="old", partition={"model_id": "m1"})
    old.commit([add], version=0, run_id="r0")
    table = LabelTable(root)
    table.create()  # as every run does: the missing column is added, in one commit
    assert "attempt" in {f.name for f in DeltaTable(root).schema().fields}
    _commit(table, _rows(["b"], run="r1"), "m1", "r1")
    frame = DeltaTable(root).to_pandas().set_index("song_id")
    assert frame.attempt.isna()["a"] and frame.attempt["b"] == 1
    table.create()  # again: nothing to add, no commit
    assert DeltaTable(root).version() == 3
