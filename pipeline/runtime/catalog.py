"""Catalogs as Ray Datasets: read, listed and validated in the cluster, never listed in the
driver; and what is already done taken away there, by one shuffle of the catalog with the
table's marks."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import TRANSIENT_KINDS, CatalogError, GenresError
from pipeline.retry import RetryPolicy
from pipeline.storage import fs as fsio
from pipeline.storage.delta import RUN_TIME_FORMAT, read_columns
from pipeline.storage.catalog import (CatalogSource, as_strings, check_unique,
                                      csv_convert_options, describe_catalog, duplicates_error,
                                      file_rows, folder_rows, manifest_header, manifest_rows,
                                      read_manifest)

log = logging.getLogger(__name__)


def catalog_dataset(catalog: CatalogSource | str, *, labels_from_folders: bool = False,
                    cpus: int | None = None):
    """(the catalog's rows as a materialized Ray Dataset of ``CATALOG_SCHEMA``, their number).
    ``catalog``: as a run resolved it at its start (:func:`describe_catalog`), or a URI.

    Its rows stay in the object store, spread over the nodes that made them; the driver holds
    block references. A bad manifest cell or a duplicate song_id stops here, before any work,
    with a CatalogError that names it. ``cpus``: what the job may use (see :func:`partitions`).
    """
    import ray

    if not isinstance(catalog, CatalogSource):
        catalog = describe_catalog(catalog)
    small = catalog.kind == "manifest" and _small(catalog)
    if small:
        # one task reads and checks it (duplicates too): a Ray Data read, its checks and a
        # duplicate check took ~2 s of every run on a catalog of a few thousand songs
        read = ray.remote(num_cpus=1, max_retries=3)(_small_manifest)
        rows = raising_genres_errors(ray.data.from_arrow_refs, [read.remote(catalog)])
    elif catalog.kind == "file":
        rows = ray.data.from_arrow(file_rows(catalog))
    elif catalog.kind == "folder":
        rows = _folder_dataset(catalog, labels_from_folders)
    else:
        rows = _manifest_dataset(catalog)
    rows = raising_genres_errors(rows.materialize)
    n = rows.count()
    if not n:
        raise CatalogError(f"catalog {catalog.source} contains no audio files")
    if not small:
        _check_unique(rows, catalog.source, n=n, partitions=partitions(n, cpus))
    return rows, n


# A manifest file up to this size (~500k rows) is read and checked by one task.
_SMALL_MANIFEST_BYTES = 64 << 20


def _small(catalog: CatalogSource) -> bool:
    fs, _ = fsio.url_to_fs(catalog.source)
    return fs.size(catalog.path) <= _SMALL_MANIFEST_BYTES


def _small_manifest(catalog: CatalogSource) -> pa.Table:
    """Ray task: a small manifest's catalog rows, validated (CatalogError otherwise)."""
    rows = manifest_rows(read_manifest(catalog), catalog=catalog)
    check_unique(rows.column("song_id"), catalog.source)
    return rows


def partitions(n: int, cpus: int | None = None) -> int:
    """Partitions of a shuffle (groupby, join) over ``n`` catalog rows: ~250k rows each, at
    least one per CPU the job may use (``cpus``; default: :func:`cluster_limits`'s) where
    each still gets ~10k rows, at most 16 per CPU (each is held in memory by one of Ray Data's
    aggregator actors)."""
    import math

    from pipeline.runtime.cluster import cluster_limits, plan_size

    cpus = cpus or plan_size(cluster_limits())
    most = min(16 * cpus, max(1, math.ceil(n / 10_000)))
    return max(1, min(most, max(cpus, math.ceil(n / 250_000))))


def without(rows, done, *, partitions: int, key: str = "song_id"):
    """The rows of ``rows`` whose ``key`` is not in ``done`` (a dataset with that column, or
    None when nothing is done), by an anti-join in the cluster. With nothing done there is
    no join: Ray Data's join with an empty side was reported to misbehave."""
    if done is None:
        return rows
    return rows.join(done.select_columns([key]), join_type="left_anti",
                     num_partitions=partitions, on=(key,))


def latest_per_song(rows, latest, *, partitions: int):
    """One row per song of ``rows`` (a dataset with a ``song_id`` column): ``latest`` (Ray
    Data fn: a pyarrow table holding all rows of some songs -> one row per song) applied to
    each block of a hash partitioning by song_id. That partitioning puts every row of a song
    in one block (Ray Data's own ``map_groups`` relies on it), so a block is reduced by one
    vectorised call, not a Python call per song as ``groupby().map_groups()`` makes."""
    return rows.repartition(partitions, keys=["song_id"]).map_batches(
        latest, batch_format="pyarrow", batch_size=None)


def table_rows(files: list[str], schema: pa.Schema, *, cpus: int):
    """The rows of a table's Parquet ``files`` (URIs, from its Delta log) in the columns of
    ``schema``, read by map tasks of a few files each, up to 8 tasks per CPU of ``cpus``.

    ``read_parquet`` took 6.5-7 s on 150 label files (200k rows, 5 columns) on 2 CPUs, most
    of a night's plan, where pyarrow reads them in 0.05 s: its planning (metadata and size
    sampling per file) costs what the reading does not."""
    import ray

    listed = ray.data.from_items([{"file": f} for f in files],
                                 override_num_blocks=max(1, min(len(files), 8 * cpus)))
    return listed.map_batches(_read_files, batch_format="pyarrow", batch_size=None,
                              fn_kwargs={"schema": schema})


def _read_files(batch: pa.Table, *, schema: pa.Schema) -> pa.Table:
    """Ray Data fn: file URIs -> their rows in ``schema``."""
    return pa.concat_tables([read_columns(uri, schema) for uri in batch.column("file").to_pylist()]
                            or [schema.empty_table()])


def plan_retries(rows, *, retry: str, policy: RetryPolicy, now):
    """The marks (:func:`retry_marks`) of a table's rows (``song_id``, ``error``, ``attempt``,
    ``run_id``: index or label rows), made in the cluster. ``retry``: ``"transient"``
    (transient errors by ``policy``'s schedule, as of ``now``), ``"all"`` (every error, now)
    or ``"none"``.

    Each row decides alone: a song is left alone when any of its rows says so. With a
    schedule whose waits never shrink, a song's latest failed try is the one due last, so
    its older rows never make it due early."""
    return rows.map_batches(retry_marks, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"retry": retry, "policy": policy,
                                       "now": now.timestamp()})


def retry_marks(batch: pa.Table, *, retry: str, policy: RetryPolicy, now: float) -> pa.Table:
    """Ray Data fn: per row, ``song_id``, ``done`` (leave the song alone; else the row is a
    failed try that is due) and its ``attempt`` (null read as 1): see :func:`plan_retries`."""
    error = pc.if_else(pc.equal(batch.column("error"), ""), None, batch.column("error"))
    failed = pc.is_valid(error).to_numpy(zero_copy_only=False)
    attempt = pc.fill_null(column_or_nulls(batch, "attempt", pa.int32()), 1).to_numpy()
    if retry == "none":
        done = np.ones(batch.num_rows, bool)
    elif retry == "all":
        done = ~failed
    else:
        transient = pc.fill_null(pc.is_in(error, value_set=pa.array(TRANSIENT_KINDS)),
                                 False).to_numpy(zero_copy_only=False)
        tried = pc.strptime(pc.utf8_slice_codeunits(batch.column("run_id"), 0, 16),
                            format=RUN_TIME_FORMAT, unit="s", error_is_null=True)
        tried = pc.fill_null(tried.cast(pa.int64()), 0).to_numpy()  # unknown: long ago
        waits = policy.after_hours * 3600 * policy.factor ** (np.maximum(attempt, 1) - 1)
        waiting = (tried + waits > now) & (attempt < policy.attempts)
        done = ~failed | ~transient | (attempt >= policy.attempts) | waiting
    return pa.table({"song_id": batch.column("song_id").cast(pa.string()),
                     "done": pa.array(done), "attempt": pa.array(attempt, pa.int32())})


def column_or_nulls(batch: pa.Table, name: str, type_: pa.DataType) -> pa.Array:
    """A column, or nulls where the batch has none (rows of an earlier genres)."""
    if name in batch.column_names:
        return batch.column(name).cast(type_)
    return pa.nulls(batch.num_rows, type_)


def todo_of(songs, marks, *, partitions: int):
    """The rows of ``songs`` (a materialized dataset with ``song_id``) that a run is to do,
    each with ``tries``: how many times the song failed before (0 for a new song).

    ``marks`` (:func:`plan_retries`; None for an empty table) leave a song alone when any of
    its rows is ``done``; ``tries`` is the most ``attempt`` of its other (due) rows. A song
    tried again since its wait passed has an older due row and a newer waiting one, and is
    left alone. Both sides go through one hash shuffle by song_id
    (:func:`latest_per_song`), each block reduced by one vectorised call. Measured on 2 CPUs,
    100k songs all due: 1.3-2.7 s; the anti-join, groupby of the due rows and join with them
    that this replaces (3 shuffles) took 14.4 s."""
    if marks is None:
        return songs.map_batches(_no_tries, batch_format="pyarrow", batch_size=None)
    schema = songs.schema().base_schema
    both = songs.map_batches(_song_side, batch_format="pyarrow", batch_size=None).union(
        marks.map_batches(_mark_side, batch_format="pyarrow", batch_size=None,
                          fn_kwargs={"schema": schema}))
    return latest_per_song(both, functools.partial(_todo_block, schema=schema),
                           partitions=partitions)


_MARK_COLUMNS = {"_mark": pa.bool_(), "_done": pa.bool_(), "_attempt": pa.int32()}


def _song_side(batch: pa.Table) -> pa.Table:
    """Ray Data fn: song rows with the mark columns: ``_mark`` false, the others null (see
    :func:`todo_of`)."""
    n = batch.num_rows
    return batch.append_column("_mark", pa.array(np.zeros(n, bool))).append_column(
        "_done", pa.nulls(n, pa.bool_())).append_column("_attempt", pa.nulls(n, pa.int32()))


def _mark_side(batch: pa.Table, *, schema: pa.Schema) -> pa.Table:
    """Ray Data fn: marks in the song rows' schema (nulls but song_id) + the mark columns."""
    n = batch.num_rows
    columns = [batch.column("song_id").cast(schema.field("song_id").type)
               if f.name == "song_id" else pa.nulls(n, f.type) for f in schema]
    columns += [pa.array(np.ones(n, bool)), batch.column("done"), batch.column("attempt")]
    return pa.Table.from_arrays(columns, schema=_with_marks(schema))


def _with_marks(schema: pa.Schema) -> pa.Schema:
    for name, type_ in _MARK_COLUMNS.items():
        schema = schema.append(pa.field(name, type_))
    return schema


def _todo_block(batch: pa.Table, *, schema: pa.Schema) -> pa.Table:
    """Ray Data fn: all song rows and marks of some songs -> the song rows to do, with
    ``tries`` (see :func:`todo_of`)."""
    out = schema.append(pa.field("tries", pa.int32()))
    if not batch.num_rows or "_mark" not in batch.column_names:
        return out.empty_table()
    mark = pc.fill_null(batch.column("_mark"), False)
    marks, rows = batch.filter(mark), batch.filter(pc.invert(mark))
    done = pc.fill_null(marks.column("_done"), True)
    skip = pc.unique(marks.filter(done).column("song_id"))
    rows = rows.filter(pc.invert(pc.is_in(rows.column("song_id"), value_set=skip)))
    tries = marks.filter(pc.invert(done)).select(["song_id", "_attempt"]).group_by(
        "song_id").aggregate([("_attempt", "max")])
    found = pc.take(tries.column("_attempt_max"),
                    pc.index_in(rows.column("song_id"), value_set=tries.column("song_id")))
    return rows.select(schema.names).append_column(
        "tries", pc.fill_null(found, 0).cast(pa.int32())).cast(out)


def _no_tries(batch: pa.Table) -> pa.Table:
    """Ray Data fn: ``tries`` as int32, 0 where a song has none."""
    tries = pc.fill_null(column_or_nulls(batch, "tries", pa.int32()), 0)
    if "tries" in batch.column_names:
        return batch.set_column(batch.schema.get_field_index("tries"), "tries", tries)
    return batch.append_column("tries", tries)


def tried_again(todo) -> int:
    """Songs of ``todo`` (with ``tries``) that failed before."""
    # a row per block streamed to the driver: Dataset.sum's first aggregate in a process
    # took ~2 s (measured on 2 CPUs), this ~0.1 s
    counts = todo.map_batches(_tried, batch_format="pyarrow", batch_size=None)
    return sum(int(row["n"]) for row in counts.iter_rows())


def _tried(batch: pa.Table) -> pa.Table:
    if "tries" not in batch.column_names:  # an empty block may have no columns
        return pa.table({"n": [0]})
    return pa.table({"n": [int(pc.sum(pc.greater(batch.column("tries"), 0)).as_py() or 0)]})


def finished(keys: pa.Table) -> pa.Array:
    """A bool per row (``song_id``, ``error``): the song is done for good there (no error,
    or a kind that is not transient, ``gone`` included)."""
    error = pc.if_else(pc.equal(keys.column("error"), ""), None, keys.column("error"))
    return pc.fill_null(pc.invert(pc.is_in(error, value_set=pa.array(TRANSIENT_KINDS))), True)


def raising_genres_errors(call, *args, **kwargs):
    """``call()``, with a GenresError raised in a Ray task or Data UDF raised again here as
    itself: Ray hands the driver a task error and a user-code error whose cause is lost on
    the way, with the original only in its traceback text (``pipeline.errors.Kind: message``)."""
    import re

    import ray

    from pipeline import errors

    try:
        return call(*args, **kwargs)
    except (ray.exceptions.RayError, ray.data.exceptions.UserCodeException) as e:
        found = re.search(r"pipeline\.errors\.(\w+): (.+)", str(e))
        kind = getattr(errors, found.group(1), None) if found else None
        if not (isinstance(kind, type) and issubclass(kind, GenresError)):
            raise
        raise kind(found.group(2).strip()) from e


def _manifest_dataset(catalog: CatalogSource):
    import ray

    fs = arrow_fs(catalog.source)
    if catalog.path.lower().endswith(".csv"):
        header = manifest_header(catalog)
        rows = ray.data.read_csv(catalog.path, filesystem=fs,
                                 convert_options=csv_convert_options(header))
    else:
        rows = ray.data.read_parquet(catalog.path, filesystem=fs).map_batches(
            as_strings, batch_format="pyarrow", batch_size=None)
    return rows.map_batches(manifest_rows, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"catalog": catalog})


def _folder_dataset(catalog: CatalogSource, labels_from_folders: bool):
    """The folder's first level is listed by one task; its files become rows there, and each
    sub-folder is listed recursively by a task of its own."""
    import ray

    listing = ray.data.from_items([{"path": catalog.path}]).map_batches(
        _list_level, batch_format="pyarrow", fn_kwargs={"root": catalog.source}).materialize()
    kwargs = {"catalog": catalog, "labels_from_folders": labels_from_folders}
    files = listing.map_batches(_listed_files, batch_format="pyarrow", batch_size=None,
                                fn_kwargs=kwargs)
    trees = listing.map_batches(_where, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"column": "is_dir"}).map_batches(
        _listed_trees, batch_format="pyarrow", batch_size=1, fn_kwargs=kwargs)
    return files.union(trees)


def _list_level(batch: pa.Table, *, root: str) -> pa.Table:
    """Ray Data fn: the entries of each listed folder: ``path``, ``is_dir``."""
    fs, _ = fsio.url_to_fs(root)
    paths, dirs = [], []
    for folder in batch.column("path").to_pylist():
        for entry in fs.ls(folder, detail=True):
            paths.append(entry["name"])
            dirs.append(entry["type"] == "directory")
    return pa.table({"path": pa.array(paths, pa.string()), "is_dir": pa.array(dirs, pa.bool_())})


def _where(batch: pa.Table, *, column: str) -> pa.Table:
    """Ray Data fn: the rows whose bool ``column`` is true."""
    return batch.filter(pc.fill_null(batch.column(column), False))


def _listed_files(batch: pa.Table, *, catalog: CatalogSource, labels_from_folders: bool):
    files = batch.filter(pc.invert(batch.column("is_dir")))
    return folder_rows(files.column("path").to_pylist(), catalog=catalog,
                       labels_from_folders=labels_from_folders)


def _listed_trees(batch: pa.Table, *, catalog: CatalogSource, labels_from_folders: bool):
    fs, _ = fsio.url_to_fs(catalog.source)
    paths = [p for folder in batch.column("path").to_pylist() for p in fs.find(folder)]
    return folder_rows(paths, catalog=catalog, labels_from_folders=labels_from_folders)


# Up to this many rows, duplicate ids are found by one task over the catalog's blocks (~0.1 s;
# ~150 MB of rows at most); above, by a groupby whose shuffle starts in ~4 s.
_UNIQUE_IN_ONE_TASK = 1_000_000


def _check_unique(rows, source: str, *, n: int, partitions: int) -> None:
    """CatalogError naming duplicate song_ids, found in the cluster."""
    if n <= _UNIQUE_IN_ONE_TASK:
        import ray

        check = ray.remote(num_cpus=1, max_retries=3)(_check_blocks)
        raising_genres_errors(ray.get, check.remote(source, *rows.to_arrow_refs()))
        return
    counts = rows.groupby("song_id", num_partitions=partitions).count()
    dupes = counts.map_batches(_repeated, batch_format="pyarrow", batch_size=None).materialize()
    n = dupes.count()
    if n:
        raise duplicates_error(source, n, [r["song_id"] for r in dupes.take(5)])


def _check_blocks(source: str, *blocks: pa.Table) -> None:
    """Ray task: ``check_unique`` over the song_ids of catalog blocks (an empty block may have
    no columns at all)."""
    check_unique(pa.chunked_array([b.column("song_id") for b in blocks if b.num_rows],
                                  pa.string()), source)


def _repeated(batch: pa.Table) -> pa.Table:
    """Ray Data fn: the song_ids counted more than once (``count()`` > 1)."""
    return batch.filter(pc.greater(batch.column("count()"), 1)).select(["song_id"])


def arrow_fs(uri: str):
    """For Ray Data's readers of ``uri``: None for a local path (Arrow's own), else a pyarrow
    filesystem over the project's fsspec one (the credentials and endpoint of every other
    read)."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    if fsio.is_local(uri):
        return None
    fs, _ = fsio.url_to_fs(uri)
    return PyFileSystem(FSSpecHandler(fs))
