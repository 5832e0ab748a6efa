"""Label tables: a Delta Lake table of song-level labels, partitioned by ``model_id``.

One row per song a run accounted for: its label (``error`` null) or why it has none
(``error``, ``message``; ``genre`` null). A run appends its rows in one or more atomic
commits whose commitInfo names the run (:mod:`pipeline.storage.delta`), so a song is in
exactly one row per ``model_id`` and ``aggregator``. Readers need nothing of this package:
``deltalake.DeltaTable(LABELS).to_pandas()``, ``polars.read_delta``, DuckDB's ``delta_scan``
or Spark read it.
"""

from __future__ import annotations

import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import CatalogError
from pipeline.storage import fs as fsio
from pipeline.storage.delta import DeltaLog, latest_rows, write_file

LABEL_SCHEMA = pa.schema([
    ("song_id", pa.string()), ("uri", pa.string()), ("genre", pa.string()),
    ("confidence", pa.float32()), ("probabilities", pa.map_(pa.string(), pa.float32())),
    ("top_tags", pa.list_(pa.string())),
    ("n_frames", pa.int32()), ("aggregator", pa.string()), ("model_id", pa.string()),
    ("scored_at", pa.timestamp("us", tz="UTC")),
    ("error", pa.string()), ("message", pa.string()), ("run_id", pa.string()),
    ("attempt", pa.int32()),  # the song's try number (1 for a first try; see pipeline.retry)
])
PARTITION_BY = ["model_id"]
FILE_SCHEMA = pa.schema([f for f in LABEL_SCHEMA if f.name not in PARTITION_BY])


class LabelTable:
    """A labels table (local path or URI)."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/")
        self.log = DeltaLog(self.root, LABEL_SCHEMA, PARTITION_BY)

    def create(self) -> None:
        """Create the table unless it exists; refuse a folder of another kind."""
        self.check_not_legacy()
        self.log.create()

    def check_exists(self) -> None:
        self.check_not_legacy()
        if not self.log.exists():
            raise CatalogError(f"{self.root} is not a labels table (no _delta_log/); write one "
                               f"with `genres score` or `genres tag`")

    def check_not_legacy(self) -> None:
        """Labels of genres 0.1 (Parquet parts with ``_commits/`` records) are refused."""
        if (fsio.exists(fsio.join(self.root, "_commits"))
                and not fsio.exists(fsio.join(self.root, "_delta_log"))):
            raise CatalogError(f"{self.root} holds labels of an earlier genres (parts with "
                               f"_commits/ records); convert it once with `genres migrate "
                               f"{self.root}`")

    def done_files(self, model_id: str, version: int | None = None) -> list[str]:
        """URIs of the files holding this model's rows (labels and errors) at ``version``."""
        return self.log.files(version, model_id=model_id)

    def write(self, rows: pa.Table, *, model_id: str, name: str) -> dict:
        """Write label rows (FILE_SCHEMA) of one model as a file of the table; its add row."""
        errors = rows.column("error")
        failed = pc.drop_null(errors)
        kinds = pc.value_counts(failed).to_pylist() if len(failed) else []
        counts = {"labelled": rows.num_rows - len(failed), "failed": len(failed),
                  "frames": int(pc.sum(pc.if_else(pc.is_null(errors), rows.column("n_frames"),
                                                  0)).as_py() or 0),
                  "errors": {k["values"]: k["counts"] for k in kinds}}
        return write_file(self.root, rows, name=name, partition={"model_id": model_id},
                          counts=counts)

    def without_songs(self, add: dict, song_ids: set[str], *, name: str,
                      model_id: str) -> dict | None:
        """An uncommitted label file (its add row) again as ``name`` without the songs
        ``song_ids``: its new add row, None when no song is left, or ``add`` itself when it
        holds none of them."""
        rows = pq.read_table(pa.BufferReader(fsio.read_bytes(fsio.join(self.root, add["path"]))),
                             schema=FILE_SCHEMA)
        keep = pc.invert(pc.is_in(rows.column("song_id"), pa.array(sorted(song_ids), pa.string())))
        if pc.all(keep).as_py():
            return add
        rows = rows.filter(keep)
        return self.write(rows, model_id=model_id, name=name) if rows.num_rows else None


def label_rows(batch: dict, *, classes: list[str], top_k: int, aggregator: str,
               scored_at: datetime.datetime, run_id: str) -> pa.Table:
    """FILE_SCHEMA rows of scored songs: ``batch`` has ``song_id``, ``uri``, ``error``,
    ``message`` (``""`` when scored), ``genre``, ``confidence``, ``n_frames``,
    ``probabilities`` [songs, classes] and ``attempt`` (the song's try number; 1 if absent);
    a song with an error gets no genre or scores."""
    n = len(batch["song_id"])
    probs = np.asarray(batch["probabilities"], np.float32).reshape(n, len(classes))
    failed = np.array([bool(e) for e in batch["error"]], bool)
    ok = ~failed
    keys = pa.array(np.tile(np.array(classes, dtype=object), n), pa.string())
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * len(classes))
    probabilities = pa.MapArray.from_arrays(offsets, keys, pa.array(probs.ravel(), pa.float32()),
                                            mask=pa.array(failed))
    k = min(top_k, len(classes))
    best = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * k),
                                   pa.array(np.asarray(classes, dtype=object)[best].ravel(),
                                            pa.string()), mask=pa.array(failed))
    text = (lambda key: pa.array([str(v) if v else None for v in batch[key]], pa.string()))
    return pa.table({
        "song_id": pa.array([str(s) for s in batch["song_id"]], pa.string()),
        "uri": pa.array([fsio.redact(u) for u in batch["uri"]], pa.string()),  # no signatures
        "genre": pa.array([str(g) if o else None for g, o in zip(batch["genre"], ok)],
                          pa.string()),
        "confidence": pa.array(np.asarray(batch["confidence"], np.float32), mask=failed),
        "probabilities": probabilities, "top_tags": top,
        "n_frames": pa.array(np.asarray(batch["n_frames"], np.int32)),
        "aggregator": pa.array([aggregator] * n, pa.string()),
        "scored_at": pa.array([scored_at] * n, pa.timestamp("us", tz="UTC")),
        "error": text("error"), "message": text("message"),
        "run_id": pa.array([run_id] * n, pa.string()),
        "attempt": pa.array(np.asarray(batch["attempt"], np.int32) if "attempt" in batch
                            else np.ones(n, np.int32)),
    }, schema=FILE_SCHEMA)


def latest_of(rows: pa.Table) -> pa.Table:
    """One row per song_id of ``rows`` (all rows of each song): the latest ``scored_at``, a
    tie going to the later ``run_id``."""
    return latest_rows(rows, ("scored_at", "run_id"))
