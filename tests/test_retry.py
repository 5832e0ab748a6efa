"""When failed songs are tried again (no Ray): the schedule, each row's verdict, and the
``gone`` kind on the last allowed try."""

import datetime

import pyarrow as pa
import pytest

from pipeline.errors import ParameterError
from pipeline.extract import extract_shard
from pipeline.features import FeatureSpec
from pipeline.retry import GONE, RetryPolicy, utc_now
from pipeline.runtime.catalog import _mark_side, _song_side, _todo_block, retry_marks
from pipeline.storage.catalog import Song
from pipeline.storage.shards import FeatureStore

T0 = datetime.datetime(2026, 12, 1, 2, 30, tzinfo=datetime.timezone.utc)
RUN0 = T0.strftime("%Y%m%dT%H%M%SZ") + "-abcd1234"
POLICY = RetryPolicy(after_hours=20, factor=2, attempts=4)


def test_the_waits_double_and_the_last_try_is_gone():
    assert [POLICY.wait_hours(a) for a in (1, 2, 3)] == [20, 40, 80]
    assert POLICY.kind("missing", 3) == "missing" and POLICY.kind("missing", 4) == GONE
    assert POLICY.kind("io", 9) == GONE and POLICY.kind("decode", 4) == "decode"
    assert POLICY.describe() == ("transient errors tried again after 20, 40, 80 h, 4 tries "
                                 "in all, then kind gone")
    with pytest.raises(ParameterError, match="--max-attempts >= 1"):
        RetryPolicy(attempts=0)


def _rows():
    """One row per case, all tried at T0."""
    cases = {"ok": (None, 1), "decode": ("decode", 1), "missing1": ("missing", 1),
             "missing2": ("missing", 2), "io3": ("io", 3), "missing4": ("missing", 4),
             "gone": (GONE, 4), "old": ("timeout", None)}
    run_ids = [RUN0] * (len(cases) - 1) + ["legacy-run"]  # an earlier genres' run id
    return pa.table({"song_id": list(cases), "error": [e for e, _ in cases.values()],
                     "attempt": pa.array([a for _, a in cases.values()], pa.int32()),
                     "run_id": run_ids})


def _verdict(hours: float, retry: str = "transient") -> dict:
    now = (T0 + datetime.timedelta(hours=hours)).timestamp()
    marks = retry_marks(_rows(), retry=retry, policy=POLICY, now=now).to_pylist()
    return {m["song_id"]: "done" if m["done"] else "due" for m in marks}


@pytest.mark.parametrize("hours,due", [
    (10, {"old"}),  # a legacy row (no time, no attempt) counts as long overdue
    (21, {"missing1", "old"}),
    (41, {"missing1", "missing2", "old"}),
    (81, {"missing1", "missing2", "io3", "old"}),
    (10_000, {"missing1", "missing2", "io3", "old"}),  # the 4th try was the last: final
])
def test_a_transient_error_is_due_after_its_wait_and_final_after_the_last_try(hours, due):
    verdict = _verdict(hours)
    assert {s for s, v in verdict.items() if v == "due"} == due
    assert {s for s, v in verdict.items() if v == "done"} == set(verdict) - due


def test_retry_errors_tries_every_error_now_and_a_feature_directory_none():
    assert {s for s, v in _verdict(0, "all").items() if v == "due"} == \
        {"decode", "missing1", "missing2", "io3", "missing4", "gone", "old"}
    assert set(_verdict(10_000, "none").values()) == {"done"}


def test_the_attempt_of_a_due_row_is_carried_and_nulls_read_as_one():
    now = (T0 + datetime.timedelta(hours=100)).timestamp()
    marks = retry_marks(_rows(), retry="transient", policy=POLICY, now=now).to_pandas()
    assert marks.set_index("song_id").attempt.to_dict()["old"] == 1
    assert marks[~marks.done].set_index("song_id").attempt.to_dict() == {
        "missing1": 1, "missing2": 2, "io3": 3, "old": 1}


def test_a_block_of_songs_and_marks_gives_the_songs_to_do_with_their_tries():
    """The reduce of ``todo_of`` (the shuffle puts a song's rows and marks in one block): a
    new song has 0 tries, a due one the most attempt of its due rows, and a song with any
    row that says leave it (done, or a newer try still waiting) is not done again."""
    schema = pa.schema([("song_id", pa.string()), ("uri", pa.string())])
    songs = pa.table({"song_id": ["new", "due", "again", "ok", "waiting"],
                      "uri": ["n.ogg", "d.ogg", "a.ogg", "o.ogg", "w.ogg"]}, schema=schema)
    marks = pa.table({"song_id": ["due", "again", "again", "ok", "waiting", "waiting",
                                  "removed"],
                      "done": [False, False, False, True, False, True, False],
                      "attempt": pa.array([1, 1, 2, 1, 1, 2, 3], pa.int32())})
    block = pa.concat_tables([_song_side(songs), _mark_side(marks, schema=schema)])
    todo = _todo_block(block, schema=schema)
    assert todo.schema.names == ["song_id", "uri", "tries"]
    assert sorted(zip(*todo.to_pydict().values())) == [
        ("again", "a.ogg", 2), ("due", "d.ogg", 1), ("new", "n.ogg", 0)]
    assert _todo_block(block.slice(0, 0), schema=schema).num_rows == 0


def test_the_last_allowed_try_of_a_missing_file_is_recorded_gone(tmp_path):
    out = str(tmp_path / "features")
    store = FeatureStore(out)
    spec = FeatureSpec(frame_seconds=1.0)
    store.prepare(spec)
    songs = [Song("third", str(tmp_path / "a.wav"), tries=2),
             Song("fourth", str(tmp_path / "b.wav"), tries=3)]
    add = extract_shard(songs, spec, out, "part-0", run_id=RUN0, retry=POLICY)["add"]
    store.commit([add], run_id=RUN0)
    index = store.read_index().to_pandas().set_index("song_id")
    assert index.error.to_dict() == {"third": "missing", "fourth": GONE}
    assert index.attempt.to_dict() == {"third": 3, "fourth": 4}
    assert index.message["fourth"].startswith("missing on 4 tries, the last allowed: ")
    assert "last allowed" not in index.message["third"]


def test_the_clock_can_be_set_for_tests_and_benchmarks(monkeypatch):
    monkeypatch.setenv("GENRES_NOW", "2026-12-03T02:30:00Z")
    assert utc_now() == T0 + datetime.timedelta(days=2)
    from pipeline.storage.delta import new_run_id

    assert new_run_id().startswith("20261203T023000Z-")
    monkeypatch.setenv("GENRES_NOW", "yesterday")
    with pytest.raises(ParameterError, match="GENRES_NOW"):
        utc_now()
    monkeypatch.delenv("GENRES_NOW")
    assert abs((utc_now() - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) < 5
