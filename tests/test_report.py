"""The catalog report's figures over a labels table with two runs and two model versions."""

import datetime
import time

import numpy as np
import pytest

from pipeline.storage.labels import LabelTable, label_rows

CLASSES = ["jazz", "rock"]


def _rows(songs: dict, *, day: int, run: str, attempt: int = 1):
    """Label rows of ``songs`` ({song_id: jazz probability, or an error kind}), each the
    song's try number ``attempt``."""
    ids = list(songs)
    failed = [isinstance(songs[s], str) for s in ids]
    jazz = np.array([0.5 if f else songs[s] for s, f in zip(ids, failed)], np.float32)
    probs = np.stack([jazz, 1 - jazz], axis=1)
    batch = {"song_id": np.array(ids, dtype=object),
             "uri": np.array([f"s3://b/{s}.ogg" for s in ids], dtype=object),
             "error": np.array([songs[s] if f else "" for s, f in zip(ids, failed)], dtype=object),
             "message": np.array(["bad" if f else "" for f in failed], dtype=object),
             "genre": np.array([CLASSES[int(p[1] > p[0])] for p in probs], dtype=object),
             "confidence": probs.max(axis=1), "n_frames": np.full(len(ids), 6, np.int32),
             "probabilities": probs, "attempt": np.full(len(ids), attempt, np.int32)}
    at = datetime.datetime(2026, 11, day, tzinfo=datetime.timezone.utc)
    return label_rows(batch, classes=CLASSES, top_k=1, aggregator="mean", scored_at=at,
                      run_id=run)


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    table = LabelTable(str(tmp_path_factory.mktemp("report") / "labels"))
    table.create()
    runs = [("m1", "20261101T000000Z-r1", 1,
             {"a": 0.8, "b": 0.8, "c": 0.8, "d": 0.3, "e": 0.3, "f": "decode"}),
            ("m1", "20261102T000000Z-r2", 2, {"b": 0.45, "f": 0.8, "g": 0.8, "h": "decode"}),
            ("m2", "20261103T000000Z-r3", 3, {**{s: 0.35 for s in "abcd"}, "e": "timeout"})]
    for model, run, day, songs in runs:
        add = table.write(_rows(songs, day=day, run=run, attempt=day), model_id=model,
                          name=f"part-{run}")
        table.log.commit([add], version=table.log.version(), run_id=run)
        time.sleep(0.05)  # commit times a date can tell apart
    return table.root


@pytest.fixture(scope="module")
def summary(ray_session, labels):
    """The figures, computed once for the tests below (each run costs a few shuffles)."""
    from pipeline.runtime.report import report_summary

    return report_summary(labels, since=1, top_n=3, threshold=0.6)


@pytest.mark.ray
@pytest.mark.slow
def test_figures_count_each_songs_latest_row_per_model(summary):
    from pipeline.runtime.report import BINS

    assert summary["version"] == 3 and sorted(summary["models"]) == ["m1", "m2"]
    m1 = summary["models"]["m1"]
    # latest rows: a c f g jazz (0.8), b rock (0.55, re-scored), d e rock (0.7), h an error
    assert (m1["songs"], m1["labelled"]) == (8, 7)
    assert m1["genres"] == {"jazz": 4, "rock": 3}
    assert m1["shares"] == pytest.approx({"jazz": 4 / 7, "rock": 3 / 7})
    assert m1["errors"] == {"decode": 1}  # f failed, then was labelled: not an error any more
    assert m1["attempts"] == {"2": {"decode": 1}}  # h, at its try of run 2
    assert m1["below_threshold"] == 1
    assert {g: sum(h) for g, h in m1["histograms"].items()} == {"jazz": 4, "rock": 3}
    assert len(m1["histograms"]["jazz"]) == BINS and m1["histograms"]["jazz"][16] == 4
    assert [r["song_id"] for r in m1["least_confident"]] == ["b", "d", "e"]
    assert m1["least_confident"][0]["uri"] == "s3://b/b.ogg"
    assert m1["most_confused"][0] == {"song_id": "b", "uri": "s3://b/b.ogg", "first": "rock",
                                      "second": "jazz", "margin": pytest.approx(0.1, abs=1e-6)}
    assert m1["confused_pairs"] == {"jazz|rock": 1}
    m2 = summary["models"]["m2"]
    assert (m2["songs"], m2["labelled"], m2["genres"]) == (5, 4, {"rock": 4})
    assert m2["errors"] == {"timeout": 1} and m2["confused_pairs"] == {}
    assert m2["attempts"] == {"3": {"timeout": 1}}
    assert m2["below_threshold"] == 0
    run = summary["run"]  # the run of the latest commit
    assert run["run_id"] == "20261103T000000Z-r3" and run["model_ids"] == ["m2"]
    assert (run["songs"], run["labelled"], run["errors"], run["commits"]) == (5, 4,
                                                                             {"timeout": 1}, 1)
    assert run["started"] == "2026-11-03T00:00:00+00:00" and run["seconds"] > 0


@pytest.mark.ray
@pytest.mark.slow
def test_one_model_only(ray_session, labels):
    from pipeline.runtime.report import report_summary

    summary = report_summary(labels, model_id="m2")
    assert list(summary["models"]) == ["m2"]


@pytest.mark.ray
@pytest.mark.slow
def test_what_changed_since_a_version(summary):
    """Since run r1 (version 1): b moved from jazz to rock, f and g were labelled, h failed."""
    m1 = summary["models"]["m1"]["changes"]
    assert summary["since"] == 1 and m1["since"] == 1
    assert m1["added"] == 2 and m1["changed"] == {"jazz": {"rock": 1}}
    assert m1["songs_changed"] == 1 and m1["errors"] == {"decode": 1}


@pytest.mark.ray
@pytest.mark.slow
def test_since_a_date_is_the_version_of_that_time(ray_session, labels):
    from deltalake import DeltaTable

    from pipeline.runtime.report import changes_since

    stamp = next(c["timestamp"] for c in DeltaTable(labels).history() if c["version"] == 1)
    when = datetime.datetime.fromtimestamp(stamp / 1000, datetime.timezone.utc).isoformat()
    changes = changes_since(LabelTable(labels), "m1", when)
    assert changes["since"] == 1 and changes["changed"] == {"jazz": {"rock": 1}}


@pytest.mark.ray
@pytest.mark.slow
def test_the_report_command_writes_the_page_the_lists_and_the_json(ray_session, labels,
                                                                    tmp_path, capsys):
    import json

    from pipeline import cli

    out = tmp_path / "r" / "report.html"
    assert cli.main(["report", labels, "--out", str(out), "--json", str(tmp_path / "f.json"),
                     "--since", "1", "--top-n", "2", "--threshold", "0.6"]) == 0
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["models"]["m1"]["changes"]["changed"] == {"jazz": {"rock": 1}}
    page = out.read_text()
    assert page.count("<svg") == 3 and "http" not in page.split("<svg", 1)[0]
    least = (tmp_path / "r" / "report-least-confident.csv").read_text().splitlines()
    assert least[0] == "model_id,song_id,uri,genre,confidence"
    assert [line.split(",")[:2] for line in least[1:]] == [["m1", "b"], ["m1", "d"],
                                                          ["m2", "a"], ["m2", "b"]]
    assert "report: 2 model(s)" in capsys.readouterr().out


@pytest.mark.ray
@pytest.mark.slow
def test_the_page_renders_every_plot_in_a_real_browser(summary, tmp_path):
    """Headless Chromium opens the page offline: no console error, every plot drawn."""
    from browser import open_page
    from pipeline.report import write_report

    page = tmp_path / "report.html"
    write_report(summary, str(page))
    seen = open_page(page.as_uri(), screenshot=str(tmp_path / "report.png"), expression="""
        [...document.querySelectorAll('figure svg')].map(s => {
            const box = s.getBoundingClientRect();
            return [box.width, box.height, s.querySelectorAll('path, rect, use').length];
        })""")
    assert seen["errors"] == []
    assert len(seen["value"]) == 3  # genres per model, a confidence histogram per model
    for width, height, marks in seen["value"]:
        assert width > 200 and height > 100 and marks > 10
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_a_blocks_figures_are_the_same_for_a_slice_and_its_copy():
    """A block Ray Data hands over may be a slice of a larger table, whose map column's
    keys and items still hold the whole table's entries."""
    import json

    import pyarrow as pa

    from pipeline.runtime.report import _top_two, block_figures

    rows = _rows({"a": 0.9, "b": 0.55, "c": "decode", "d": 0.3, "e": 0.52, "f": 0.1}, day=1,
                 run="r1")
    part = rows.slice(1, 4)
    copy = pa.Table.from_pylist(part.to_pylist(), schema=part.schema)
    figures = [json.loads(block_figures(t, top_n=2, threshold=0.6)["figures"][0].as_py())
               for t in (part, copy)]
    assert figures[0] == figures[1]
    assert figures[0]["songs"] == 4 and figures[0]["errors"] == {"decode": 1}
    assert figures[0]["genres"] == {"jazz": 2, "rock": 1} and figures[0]["below_threshold"] == 2
    assert figures[0]["pairs"] == {"jazz|rock": 2}  # b and e: within 0.2 of each other
    assert [r["song_id"] for r in figures[0]["most_confused"]] == ["e", "b"]
    assert [r["song_id"] for r in figures[0]["least_confident"]] == ["e", "b"]
    names, first, second, margin = _top_two(rows.column("probabilities").chunk(0).slice(3, 2))
    assert names == CLASSES and list(first) == [1, 0] and list(second) == [0, 1]  # d, e
    assert np.allclose(margin, [0.4, 0.04])
    errors = json.loads(block_figures(rows.slice(2, 1), top_n=2, threshold=0.6)["figures"][0]
                        .as_py())
    assert errors["labelled"] == 0 and errors["errors"] == {"decode": 1}
