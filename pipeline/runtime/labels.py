"""Queries over a labels table, run by Ray Data in the cluster."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.runtime.catalog import arrow_fs, latest_per_song, partitions
from pipeline.storage import fs as fsio
from pipeline.storage.delta import conform
from pipeline.storage.labels import LABEL_SCHEMA, LabelTable, latest_of


def latest_labels(root: str, *, model_id: str | None = None, as_of: int | str | None = None,
                  with_errors: bool = False):
    """A dataset of one row per song: its most recently scored label (of ``model_id`` only,
    if given) in the table as it was at ``as_of`` (a version number or an ISO date-time;
    None: now). Songs with only errors have no row; ``with_errors``: the latest row of every
    song, label or error. None when the table has no files."""
    import ray
    from ray.data.datasource.partitioning import Partitioning

    table = LabelTable(root)
    table.check_exists()
    partition = {"model_id": model_id} if model_id else {}
    files = table.log.files(as_of, **partition)
    if not files:
        return None
    base = fsio.url_to_fs(table.root)[1]
    rows = ray.data.read_parquet(files, filesystem=arrow_fs(table.root),
                                 partitioning=Partitioning("hive", base_dir=base))
    rows = rows.map_batches(_labels_only, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"with_errors": with_errors})
    return latest_per_song(rows, latest_of,
                           partitions=partitions(table.log.rows(as_of, **partition)))


def _labels_only(batch: pa.Table, *, with_errors: bool = False) -> pa.Table:
    """Ray Data fn: the rows that are labels (no error; every row ``with_errors``), in the
    table's column order."""
    if not with_errors:
        batch = batch.filter(pc.is_null(batch.column("error")))
    return conform(batch, LABEL_SCHEMA)
