"""The catalog report's figures, computed in the cluster over a labels table.

Each block of a model's latest rows (one per song) is summarised where it is into a small
partial: label counts, confidence histograms per genre, error kinds, and its ``top_n`` least
confident and most confused songs. The driver adds the partials up; nothing per song reaches
it but those review lists.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.storage import fs as fsio
from pipeline.storage.labels import LabelTable

BINS = 20  # confidence histogram bins over [0, 1]
CONFUSED = 0.2  # a song is confused between its top two genres when they are this close


def report_summary(root: str, *, model_id: str | None = None, since: int | str | None = None,
                   top_n: int = 20, threshold: float = 0.5, bundle: str | None = None) -> dict:
    """The report's figures for every model of the labels table ``root`` (or ``model_id``):
    ``{"version", "threshold", "bins", "models": {model_id: figures}}``, where figures are
    ``songs``, ``labelled``, ``genres`` ({genre: songs}), ``shares``, ``histograms`` ({genre:
    [BINS counts]}), ``below_threshold`` (songs whose confidence is below ``threshold``),
    ``errors`` ({kind: songs}), ``least_confident`` and ``most_confused`` (review lists of
    ``top_n`` songs) and ``confused_pairs`` ({"a|b": songs whose top two genres are a and b,
    within ``CONFUSED`` of each other}). With ``since`` (a table version or an ISO date-time),
    each model's figures also hold ``changes`` (see :func:`changes_since`). ``run``: the
    last run's own figures (:func:`last_run`); ``bundle``: a model bundle whose ``model_id``,
    test metrics and confusion matrices the report shows."""
    from pipeline.runtime.labels import latest_labels

    table = LabelTable(root)
    table.check_exists()
    models = [model_id] if model_id else model_ids(table)
    out = {"table": root, "version": table.log.version(), "threshold": threshold, "bins": BINS,
           "models": {}}
    version = table.log.table(since).version() if since is not None else None
    for model in models:
        # every song's latest row, label or error: the figures and the changes both read it
        rows = latest_labels(root, model_id=model, with_errors=True)
        rows = rows.materialize() if rows is not None else None
        partial = _empty()
        if rows is not None:
            parts = rows.map_batches(block_figures, batch_format="pyarrow", batch_size=None,
                                     fn_kwargs={"top_n": top_n, "threshold": threshold})
            for batch in parts.iter_batches(batch_size=None, batch_format="pyarrow"):
                for text in batch.column("figures").to_pylist():
                    partial = _combine(partial, json.loads(text), top_n)
        out["models"][model] = _finish(partial)
        if version is not None:
            out["models"][model]["changes"] = changes_since(table, model, version, now=rows)
    if version is not None:
        out["since"] = version
    out["run"] = last_run(table)
    if bundle is not None:
        out["bundle"] = bundle_figures(bundle)
    return out


def last_run(table: LabelTable) -> dict | None:
    """The figures of the run that made the table's latest commit: ``run_id``, ``model_ids``,
    ``songs`` (rows it wrote), ``labelled``, ``errors`` ({kind: songs}), ``commits``,
    ``started``/``finished`` (UTC) and ``seconds``, from its run_id (its start time), its
    commits' times and its rows (counted in the cluster)."""
    import datetime

    from pipeline.storage.delta import RUN_KEY

    history = [c for c in table.log.table().history() if c.get(RUN_KEY)]
    if not history:
        return None
    run = max(history, key=lambda c: c["version"])[RUN_KEY]
    commits = sorted(c["version"] for c in history if c[RUN_KEY] == run)
    finished = max(c["timestamp"] for c in history if c[RUN_KEY] == run) / 1000
    _, added = table.log.added_since(commits[0] - 1)
    files = [f for f in added if f["run_id"] == run]
    kinds = _row_kinds(table, [f["path"] for f in files], labels=True)
    labelled = kinds.pop(None, 0)
    figures = {"songs": labelled + sum(kinds.values()), "labelled": labelled, "errors": kinds}
    utc = datetime.timezone.utc
    started = datetime.datetime.strptime(run[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=utc)
    return {"run_id": run, "model_ids": sorted({f["partition"].get("model_id") for f in files}),
            **figures, "commits": len(commits), "started": started.isoformat(),
            "finished": datetime.datetime.fromtimestamp(finished, utc).isoformat(),
            "seconds": round(finished - started.timestamp(), 1)}


def bundle_figures(bundle: str) -> dict:
    """A model bundle's ``model_id``, classes, test metrics (accuracies, confusion) and
    calibration (temperature, test ECE before and after)."""
    from pipeline.storage.bundle import read_bundle

    found = read_bundle(bundle)
    metrics = json.loads(fsio.read_bytes(fsio.join(found.root, "metrics.json")))
    return {"model_id": found.model_id, "classes": metrics.get("classes"),
            "test": metrics.get("test"), "epochs_run": metrics.get("epochs_run"),
            "calibration": {k: v for k, v in (metrics.get("calibration") or {}).items()
                            if k in ("aggregator", "temperature", "fitted_on", "songs",
                                     "test")}}


def changes_since(table: LabelTable, model: str, since: int | str, *, now=None) -> dict:
    """What the runs after ``since`` changed in ``model``'s labels: ``added`` (songs labelled
    now that had no label then), ``changed`` ({old genre: {new genre: songs}}, the change
    matrix) and ``errors`` ({kind: error rows committed since}). ``now``: the model's latest
    rows with errors, when the caller has them (else read here)."""
    from pipeline.runtime.catalog import partitions
    from pipeline.runtime.labels import _labels_only, latest_labels

    # a version number is taken as it is: a date is resolved from the table's history
    version = since if isinstance(since, int) else table.log.table(since).version()
    if now is None:
        now = latest_labels(table.root, model_id=model, with_errors=True)
    before = latest_labels(table.root, model_id=model, as_of=version)
    added, changed = 0, {}
    if now is not None:
        now = now.map_batches(_labels_only, batch_format="pyarrow", batch_size=None)
        now = now.select_columns(["song_id", "genre"])
        if before is None:
            added = now.count()
        else:
            before = before.select_columns(["song_id", "genre"]).rename_columns(
                {"genre": "before"})
            joined = now.join(before, join_type="left_outer", on=("song_id",),
                              num_partitions=partitions(table.log.rows(model_id=model)))
            for batch in joined.map_batches(_moves, batch_format="pyarrow",
                                            batch_size=None).iter_rows():
                if batch["before"] is None:
                    added += batch["songs"]
                elif batch["before"] != batch["genre"]:
                    moves = changed.setdefault(batch["before"], {})
                    moves[batch["genre"]] = moves.get(batch["genre"], 0) + batch["songs"]
    _, files = table.log.added_since(version)
    errors = _row_kinds(table, [f["path"] for f in files
                                if f["partition"].get("model_id") == model])
    return {"since": version, "added": added, "changed": changed,
            "songs_changed": sum(n for moves in changed.values() for n in moves.values()),
            "errors": errors}


def _row_kinds(table: LabelTable, paths: list[str], *, labels: bool = False) -> dict:
    """{error kind: rows} of the table files ``paths``, counted in the cluster (``labels``:
    the rows without an error too, under None)."""
    import ray

    from pipeline.runtime.catalog import arrow_fs

    kinds: dict = {}
    if not paths:
        return kinds
    # the projection is pushed into the read (read_parquet's columns= is deprecated)
    rows = ray.data.read_parquet(paths, filesystem=arrow_fs(table.root)).select_columns(["error"])
    for row in rows.map_batches(_error_kinds, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"labels": labels}).iter_rows():
        kinds[row["error"]] = kinds.get(row["error"], 0) + row["songs"]
    return kinds


def _moves(batch: pa.Table) -> pa.Table:
    """Ray Data fn: songs per (genre then, genre now) of a block of the joined labels."""
    counts = batch.group_by(["before", "genre"], use_threads=False).aggregate(
        [("song_id", "count")])
    return counts.rename_columns(["before", "genre", "songs"])


def _error_kinds(batch: pa.Table, *, labels: bool = False) -> pa.Table:
    """Ray Data fn: error rows per kind of a block of label rows (``labels``: the rows
    without an error too, as kind null)."""
    counts = pc.value_counts(batch.column("error") if labels
                             else pc.drop_null(batch.column("error")))
    return pa.table({"error": pa.array(counts.field("values").to_pylist(), pa.string()),
                     "songs": counts.field("counts")})


def model_ids(table: LabelTable) -> list[str]:
    """The model_ids the table holds rows of (from its log: one entry per file)."""
    actions = pa.table(table.log.table().get_add_actions(flatten=True))
    if "partition.model_id" not in actions.column_names:
        return []
    return sorted(pc.unique(actions.column("partition.model_id")).to_pylist())


def block_figures(batch: pa.Table, *, top_n: int, threshold: float) -> pa.Table:
    """Ray Data fn: one row, ``figures``, the JSON partial of a block of latest label rows.
    Vectorised over the block: only its ``top_n`` review rows become Python objects."""
    ok = pc.is_null(batch.column("error"))
    labelled = batch.filter(ok)
    confidence = labelled.column("confidence").to_numpy(zero_copy_only=False).astype(np.float64)
    genre = pc.dictionary_encode(labelled.column("genre").combine_chunks())
    codes = genre.indices.to_numpy(zero_copy_only=False)
    counts, histograms = {}, {}
    for code, name in enumerate(genre.dictionary.to_pylist()):
        mine = confidence[codes == code]
        counts[name] = int(mine.size)
        histograms[name] = np.histogram(np.clip(mine, 0, 1), bins=BINS, range=(0, 1))[0].tolist()
    errors = pc.value_counts(pc.drop_null(batch.column("error"))).to_pylist()
    names, first, second, margin = _top_two(labelled.column("probabilities"))
    close = (margin < CONFUSED) & (first != second)
    low, high = np.minimum(first, second)[close], np.maximum(first, second)[close]
    pair, songs = np.unique(low * len(names) + high, return_counts=True)
    pairs = {f"{names[p // len(names)]}|{names[p % len(names)]}": int(n)
             for p, n in zip(pair, songs)}
    least = labelled.take(np.argsort(confidence, kind="stable")[:top_n])
    confused = np.argsort(margin, kind="stable")[:top_n]
    figures = {"songs": batch.num_rows, "labelled": labelled.num_rows, "genres": counts,
               "histograms": histograms, "below_threshold": int((confidence < threshold).sum()),
               "errors": {e["values"]: e["counts"] for e in errors},
               "attempts": _by_attempt(batch.filter(pc.invert(ok))), "pairs": pairs,
               "least_confident": [
                   {"song_id": r["song_id"], "uri": r["uri"], "genre": r["genre"],
                    "confidence": float(r["confidence"])} for r in least.to_pylist()],
               "most_confused": [
                   {"song_id": r["song_id"], "uri": r["uri"], "first": names[first[i]],
                    "second": names[second[i]], "margin": float(margin[i])}
                   for i, r in zip(confused, labelled.take(confused).to_pylist())]}
    return pa.table({"figures": [json.dumps(figures)]})


def _by_attempt(failed: pa.Table) -> dict:
    """{try number: {error kind: songs}} of a block's latest rows with an error (an unknown
    try number, from an earlier genres, counts as 1)."""
    from pipeline.runtime.catalog import column_or_nulls

    attempt = pc.fill_null(column_or_nulls(failed, "attempt", pa.int32()), 1)
    counts = pa.table({"attempt": attempt, "error": failed.column("error")}).group_by(
        ["attempt", "error"], use_threads=False).aggregate([("error", "count")])
    out: dict = {}
    for row in counts.to_pylist():
        out.setdefault(str(row["attempt"]), {})[row["error"]] = row["error_count"]
    return out


def _top_two(probabilities) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(the genres named in a map column of probabilities, and for each row: the index in
    those names of its most and second most probable genre, and their margin). Every row
    has the same number of entries (one model's classes)."""
    column = probabilities.combine_chunks() if isinstance(probabilities, pa.ChunkedArray) \
        else probabilities
    if len(column) == 0:
        return [], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    offsets = column.offsets.to_numpy()
    width = int(offsets[1] - offsets[0])
    # .keys and .items ignore a slice's offset: cut them to this array's entries
    keys = column.keys.slice(offsets[0], offsets[-1] - offsets[0])
    values = column.items.slice(offsets[0], offsets[-1] - offsets[0])
    keys = pc.dictionary_encode(keys)
    codes = keys.indices.to_numpy(zero_copy_only=False).reshape(-1, width)
    values = values.to_numpy(zero_copy_only=False).reshape(-1, width)
    order = np.argsort(-values, axis=1, kind="stable")
    rows = np.arange(len(column))
    top, runner = order[:, 0], order[:, 1] if width > 1 else order[:, 0]
    margin = (values[rows, top] - values[rows, runner]).astype(np.float64)
    return keys.dictionary.to_pylist(), codes[rows, top], codes[rows, runner], margin


def _empty() -> dict:
    return {"songs": 0, "labelled": 0, "genres": {}, "histograms": {}, "below_threshold": 0,
            "errors": {}, "attempts": {}, "pairs": {}, "least_confident": [],
            "most_confused": []}


def _combine(total: dict, part: dict, top_n: int) -> dict:
    """Two partials as one: counts added, review lists merged and cut to ``top_n``."""
    for key in ("songs", "labelled", "below_threshold"):
        total[key] += part[key]
    for key in ("genres", "errors", "pairs"):
        for name, n in part[key].items():
            total[key][name] = total[key].get(name, 0) + n
    for attempt, kinds in part["attempts"].items():
        have = total["attempts"].setdefault(attempt, {})
        for kind, n in kinds.items():
            have[kind] = have.get(kind, 0) + n
    for genre, counts in part["histograms"].items():
        have = total["histograms"].setdefault(genre, [0] * BINS)
        total["histograms"][genre] = [a + b for a, b in zip(have, counts)]
    total["least_confident"] = sorted(total["least_confident"] + part["least_confident"],
                                      key=lambda r: (r["confidence"], r["song_id"]))[:top_n]
    total["most_confused"] = sorted(total["most_confused"] + part["most_confused"],
                                    key=lambda r: (r["margin"], r["song_id"]))[:top_n]
    return total


def _finish(total: dict) -> dict:
    """Shares, and pairs of genres most often confused first."""
    labelled = max(1, total["labelled"])
    total["shares"] = {g: n / labelled for g, n in sorted(total["genres"].items())}
    total["genres"] = dict(sorted(total["genres"].items(), key=lambda kv: (-kv[1], kv[0])))
    total["confused_pairs"] = dict(sorted(total.pop("pairs").items(),
                                          key=lambda kv: (-kv[1], kv[0])))
    total["attempts"] = dict(sorted(total["attempts"].items(), key=lambda kv: int(kv[0])))
    return total
