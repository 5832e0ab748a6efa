"""``genres migrate``: feature directories and labels of genres 0.1 (Parquet parts, a JSON
commit record per part in ``_commits/``, error rows in ``_errors/``) into this version's
Delta tables, once; a model bundle saved before file hashes gets them recorded.

Features keep their parts where they are; their commit records become the ``_songs`` table
(an index file per 1,000 parts). Labels are rewritten into the labels table. The old records
(and old label files) move to ``_legacy/``, out of every reader's way. Reading the old
records costs a read per part: this runs once per directory.
"""

from __future__ import annotations

import json
import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import CatalogError
from pipeline.storage import fs as fsio
from pipeline.storage.bundle import BUNDLE_FILE, record_files
from pipeline.storage.delta import conform
from pipeline.storage.labels import FILE_SCHEMA, LabelTable
from pipeline.storage.shards import ERROR_SCHEMA, SPEC_FILE, FeatureStore, index_rows

RUN_ID = "migrated"
_BATCH = 1000  # files per commit


def migrate(root: str) -> dict:
    """Convert the genres 0.1 directory ``root``; a summary (kind, songs, files, table)."""
    root = str(root).rstrip("/")
    if fsio.exists(fsio.join(root, BUNDLE_FILE)):  # a model bundle: its files' hashes
        return record_files(root)
    fs, path = fsio.url_to_fs(root)
    commits = posixpath.join(path, "_commits")
    if not fs.exists(commits):
        raise CatalogError(f"{root} has no _commits/ records of an earlier genres: nothing to "
                           f"migrate")
    records = []
    for name in sorted(fs.ls(commits, detail=False)):
        if name.endswith(".json"):
            with fs.open(name, "rb") as f:
                records.append(json.load(f))
    if fsio.exists(fsio.join(root, SPEC_FILE)):
        summary = _features(root, records)
    else:
        summary = _labels(root, records)
    _retire(fs, path, records, labels=summary["kind"] == "labels")
    return summary


def _features(root: str, records: list[dict]) -> dict:
    store = FeatureStore(root)
    if store.index.exists():
        raise CatalogError(f"{root} is already migrated ({store.index.root} exists)")
    store.index.create()
    adds, songs = [], 0
    for start in range(0, len(records), _BATCH):  # an index file per _BATCH old parts
        tables = []
        for record in records[start:start + _BATCH]:
            ids, frames = [], []
            if record["rows"]:
                counts = pc.value_counts(store.read_part(record["part"], ["song_id"])
                                         .column("song_id"))
                ids = counts.field("values").to_pylist()
                frames = counts.field("counts").to_pylist()
            tables.append(index_rows(record["part"], ids, frames, _errors(root, record),
                                     run_id=RUN_ID))
        index = pa.concat_tables(tables)
        adds.append(store.write_index(f"index-{RUN_ID}-{start:08d}", index))
        songs += index.num_rows
    _commit(store.index, adds)
    return {"kind": "features", "songs": songs, "files": len(adds), "table": store.index.root}


def _labels(root: str, records: list[dict]) -> dict:
    table = LabelTable(root)
    if table.log.exists():
        raise CatalogError(f"{root} is already migrated (it has a _delta_log/)")
    table.log.create()
    adds, songs = [], 0
    for record in records:
        model_id, aggregator = record["model_id"], record["aggregator"]
        parts = []
        if record["rows"]:
            old = _read(fsio.join(root, record["part"] + ".parquet"))
            old = old.set_column(old.schema.get_field_index("scored_at"), "scored_at",
                                 old.column("scored_at").cast(pa.timestamp("us", tz="UTC")))
            n = old.num_rows
            parts.append(old.append_column("error", pa.nulls(n, pa.string()))
                         .append_column("message", pa.nulls(n, pa.string()))
                         .append_column("run_id", pa.array([RUN_ID] * n, pa.string())))
            parts[-1] = conform(parts[-1], FILE_SCHEMA)  # attempt: unknown
        errors = _errors(root, record)
        if errors.num_rows:
            n = errors.num_rows
            scored_at = parts[0].column("scored_at")[0] if parts else None
            parts.append(pa.table({
                "song_id": errors.column("song_id"), "uri": errors.column("uri"),
                "genre": pa.nulls(n, pa.string()), "confidence": pa.nulls(n, pa.float32()),
                "probabilities": pa.nulls(n, FILE_SCHEMA.field("probabilities").type),
                "top_tags": pa.nulls(n, pa.list_(pa.string())),
                "n_frames": pa.array([0] * n, pa.int32()),
                "aggregator": pa.array([aggregator] * n, pa.string()),
                "scored_at": pa.array([scored_at.as_py() if scored_at else None] * n,
                                      pa.timestamp("us", tz="UTC")),
                "error": errors.column("error"), "message": errors.column("message"),
                "run_id": pa.array([RUN_ID] * n, pa.string()),
                "attempt": pa.nulls(n, pa.int32())}, schema=FILE_SCHEMA))
        if parts:
            rows = pa.concat_tables(parts)
            adds.append(table.write(rows, model_id=model_id, name=f"{record['part']}-{RUN_ID}"))
            songs += rows.num_rows
    _commit(table.log, adds)
    return {"kind": "labels", "songs": songs, "files": len(adds), "table": table.root}


def _commit(log, adds: list[dict]) -> None:
    for i in range(0, len(adds), _BATCH):
        log.commit(adds[i:i + _BATCH], version=log.version(), run_id=RUN_ID)


def _errors(root: str, record: dict) -> pa.Table:
    if not record["errors"]:
        return ERROR_SCHEMA.empty_table()
    return _read(fsio.join(root, "_errors", record["part"] + ".parquet")) \
        .select(ERROR_SCHEMA.names).cast(ERROR_SCHEMA)


def _read(uri: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(fsio.read_bytes(uri)))


def _retire(fs, path: str, records: list[dict], *, labels: bool) -> None:
    """Move the old records (and old label files) under ``_legacy/``."""
    legacy = posixpath.join(path, "_legacy")
    for folder in ("_commits", "_errors"):
        if fs.exists(posixpath.join(path, folder)):
            fs.mv(posixpath.join(path, folder), posixpath.join(legacy, folder), recursive=True)
    if labels:
        for record in records:
            old = posixpath.join(path, record["part"] + ".parquet")
            if fs.exists(old):
                fs.mv(old, posixpath.join(legacy, record["part"] + ".parquet"))
