"""Delta Lake tables (delta-rs) whose files workers write and whose commits the driver makes.

Workers write plain Parquet files into a table's folder (:func:`write_file`) and hand back
one small *add row* per file (:data:`ADD_SCHEMA`). The driver commits a batch of add rows as
one Delta transaction (:meth:`DeltaLog.commit`) at exactly the version after the one it last
read: when another run has committed in between, the commit fails instead of landing after
it, so the caller can first look at what that run added (:meth:`DeltaLog.added_since`) and
drop its own copies of those songs. delta-rs would append both (two appends never conflict
for Delta), and a song would be labelled twice.

A file that was written but never committed (a killed run, a retried task) is invisible to
every Delta reader; ``DeltaTable.vacuum`` removes such files.
"""

from __future__ import annotations

import json
import posixpath
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.storage import fs as fsio

RUN_KEY = "genres.run_id"  # commitInfo key: the run that made a commit
RUN_TIME_FORMAT = "%Y%m%dT%H%M%SZ"  # a run id starts with its start time, UTC
ADD_SCHEMA = pa.schema([
    ("path", pa.string()),            # relative to the table root
    ("size", pa.int64()),             # bytes
    ("partition", pa.string()),       # JSON {column: value}
    ("modification_time", pa.int64()),  # ms since the epoch
    ("rows", pa.int64()),
    ("counts", pa.string()),          # JSON: what the file holds, for the run's summary
])


class CommitConflict(Exception):
    """Another commit landed on the version this one was to take."""


def new_run_id() -> str:
    """A run's id: its start time (sortable; :func:`pipeline.retry.utc_now`) and a random
    suffix (unique)."""
    from pipeline.retry import utc_now

    return utc_now().strftime(RUN_TIME_FORMAT) + "-" + uuid.uuid4().hex[:8]


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as a Parquet file in memory (zstd, one row group per 64k rows)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=65536)
    return sink.getvalue().to_pybytes()


def write_file(root: str, table: pa.Table, *, name: str, partition: dict[str, str] | None = None,
               counts: dict | None = None, data: bytes | None = None) -> dict:
    """Write ``table`` (without its partition columns) as ``[k=v/]name.parquet`` under the
    table ``root``; its add row. ``data``: the file's bytes when the caller made them."""
    partition = partition or {}
    rel = posixpath.join(*[f"{k}={v}" for k, v in partition.items()], f"{name}.parquet")
    data = parquet_bytes(table) if data is None else data
    fsio.write_bytes_atomic(fsio.join(root, rel), data)
    return {"path": rel, "size": len(data), "partition": json.dumps(partition),
            "modification_time": int(time.time() * 1000), "rows": table.num_rows,
            "counts": json.dumps(counts or {})}


def storage_options(root: str) -> dict[str, str] | None:
    """delta-rs options for ``root``: on S3 the endpoint and credentials of the environment
    (``AWS_ENDPOINT_URL``, plain HTTP allowed for a local endpoint)."""
    import os

    if fsio.protocol_of(root) not in ("s3", "s3a"):
        return None
    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if not (os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")):
        options["AWS_REGION"] = "us-east-1"
    return options or None


class DeltaLog:
    """One Delta table: ``schema`` (Arrow, partition columns included) partitioned by
    ``partition_by``."""

    def __init__(self, root: str, schema: pa.Schema, partition_by: list[str] | None = None):
        self.root = str(root).rstrip("/")
        self.schema = schema
        self.partition_by = list(partition_by or [])
        self.options = storage_options(self.root)

    def exists(self) -> bool:
        from deltalake import DeltaTable

        return DeltaTable.is_deltatable(self.root, storage_options=self.options)

    def create(self) -> None:
        """Create the table, empty, unless it exists (two runs may race to it: both win); a
        table of an earlier genres gets the columns it lacks (:meth:`add_missing_columns`)."""
        from deltalake import Schema
        from deltalake.exceptions import DeltaError
        from deltalake.transaction import create_table_with_add_actions

        if self.exists():
            self.add_missing_columns()
            return
        try:
            create_table_with_add_actions(self.root, Schema.from_arrow(self.schema), [],
                                          mode="ignore", partition_by=self.partition_by or None,
                                          storage_options=self.options)
        except DeltaError:
            if not self.exists():
                raise

    def add_missing_columns(self) -> None:
        """Add the columns of ``schema`` the table lacks (nullable: its files without them
        read as nulls), in one commit (delta-rs' schema evolution)."""
        from deltalake import Field
        from deltalake.exceptions import DeltaError

        table = self.table()
        have = {f.name for f in table.schema().fields}
        missing = [f for f in self.schema if f.name not in have]
        if not missing:
            return
        fields = [Field.from_arrow(f.with_nullable(True)) for f in missing]
        try:
            table.alter.add_columns(fields)
        except DeltaError:  # another run added them first
            have = {f.name for f in self.table().schema().fields}
            if any(f.name not in have for f in missing):
                raise

    def table(self, version: int | str | None = None):
        """The DeltaTable at ``version`` (a number, an ISO date-time, or None: the latest)."""
        from deltalake import DeltaTable

        if isinstance(version, str):
            table = DeltaTable(self.root, storage_options=self.options)
            table.load_as_version(version)
            return table
        return DeltaTable(self.root, version=version, storage_options=self.options)

    def version(self) -> int:
        return self.table().version()

    def files(self, version: int | str | None = None, **partition: str) -> list[str]:
        """URIs of the table's files at ``version`` in the partition ``partition``."""
        table = self.table(version)
        predicate = [(k, "=", v) for k, v in partition.items()] or None
        uris = table.file_uris(file_pruning_predicate=predicate)
        return [fsio.unstrip(u, self.root) if "://" not in u else u for u in uris]

    def rows(self, version: int | str | None = None, **partition: str) -> int:
        """Rows of the table's files at ``version`` in the partition ``partition``, from the
        log's file statistics (no file is read)."""
        actions = pa.table(self.table(version).get_add_actions(flatten=True))
        for key, value in partition.items():
            actions = actions.filter(pc.equal(actions.column(f"partition.{key}"), value))
        return int(pc.sum(actions.column("num_records")).as_py() or 0)

    def added_since(self, version: int) -> tuple[int, list[dict]]:
        """(the latest version, the files committed after ``version``: ``path`` (a URI),
        ``partition`` (a dict) and ``run_id`` of the run that committed each)."""
        fs, log = fsio.url_to_fs(fsio.join(self.root, "_delta_log"))
        added = []
        while True:
            path = posixpath.join(log, f"{version + 1:020d}.json")
            try:
                with fs.open(path, "rb") as f:
                    actions = [json.loads(line) for line in f.read().splitlines() if line.strip()]
            except FileNotFoundError:
                return version, added
            version += 1
            run = next((a["commitInfo"].get(RUN_KEY) for a in actions if "commitInfo" in a), None)
            added += [{"path": fsio.join(self.root, a["add"]["path"]),
                       "partition": a["add"].get("partitionValues") or {}, "run_id": run}
                      for a in actions if "add" in a]

    def commit(self, adds: list[dict], *, version: int, run_id: str,
               metadata: dict | None = None) -> int:
        """Commit the add rows ``adds`` as version ``version + 1``; the version committed.
        Raises CommitConflict when that version was taken meanwhile."""
        from deltalake import CommitProperties
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import AddAction

        actions = [AddAction(path=a["path"], size=int(a["size"]),
                             partition_values=json.loads(a["partition"]),
                             modification_time=int(a["modification_time"]), data_change=True,
                             stats=json.dumps({"numRecords": int(a["rows"])}))
                   for a in adds]
        table = self.table(version)
        try:
            table.create_write_transaction(
                actions, mode="append", schema=table.schema(),
                partition_by=self.partition_by or None,
                commit_properties=CommitProperties(
                    custom_metadata={RUN_KEY: run_id, **(metadata or {})}, max_commit_retries=0))
        except CommitFailedError as e:
            raise CommitConflict(str(e)) from e
        return version + 1


class Committer:
    """A run's commits: its add rows are committed in batches as they arrive (every
    ``every_files`` files or ``every_s`` seconds), so a killed run keeps what it committed and
    its re-run skips it.

    Before each commit it reads what other runs committed since it last looked, keeps the
    files ``relevant`` to it, and ``resolve(pending, new)`` (add rows, the other runs' files
    committed since the last call -> add rows) replaces its pending files with copies without
    the songs of every such file so far. Each file is handed over once: ``resolve`` keeps
    what it needs of them (their song ids) for the rows still to come, so a song another run
    committed first is dropped whenever this run's copy arrives, and the Committer itself
    holds nothing per file of theirs. ``combine(pending)`` (add rows -> one add row), if
    given, makes the files of a commit one file.
    """

    def __init__(self, log: DeltaLog, *, run_id: str, version: int, resolve,
                 relevant=lambda add: True, combine=None, every_files: int = 64,
                 every_s: float = 60.0):
        self.log, self.run_id, self.version = log, run_id, version
        self.resolve, self.relevant, self.combine = resolve, relevant, combine
        self.every_files, self.every_s = every_files, every_s
        self.pending: list[dict] = []
        self.overlapped = False  # another run committed some of this table meanwhile
        self.totals: dict = {}
        self.commits = self.refused = self.resolved = 0
        self._last = time.monotonic()

    def add(self, rows: list[dict]) -> None:
        self.pending += rows
        if (len(self.pending) >= self.every_files
                or time.monotonic() - self._last >= self.every_s):
            self.flush()

    def flush(self) -> None:
        """Commit every pending file (less the songs other runs committed first)."""
        while self.pending:
            latest, added = self.log.added_since(self.version)
            theirs = [a for a in added if a["run_id"] != self.run_id and self.relevant(a)]
            self.version = latest
            self.overlapped = self.overlapped or bool(theirs)
            if self.overlapped:
                self.pending = self.resolve(self.pending, theirs)
                self.resolved += 1
                if not self.pending:
                    break
            if self.combine is not None and len(self.pending) > 1:
                self.pending = [self.combine(self.pending)]
            try:
                self.version = self.log.commit(self.pending, version=latest, run_id=self.run_id)
            except CommitConflict:
                self.refused += 1
                continue
            self.commits += 1
            for row in self.pending:
                add_counts(self.totals, json.loads(row["counts"]))
            self.pending = []
        self._last = time.monotonic()


def read_columns(uri: str, schema: pa.Schema) -> pa.Table:
    """The columns of ``schema`` of one Parquet file of a table, read alone (a file of an
    earlier genres without ``attempt`` gives nulls there: :func:`conform`)."""
    fs, path = fsio.url_to_fs(uri)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        have = set(parquet.schema_arrow.names)
        table = parquet.read(columns=[n for n in schema.names if n in have])
    return conform(table, schema)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with the columns of ``schema``, in its order and types: a column a file of an
    earlier genres lacks (``attempt``) comes as nulls."""
    for field in schema:
        if field.name not in table.column_names:
            table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    return table.select(schema.names).cast(schema)


def add_counts(totals: dict, counts: dict) -> None:
    """Add ``counts`` (numbers, or dicts of numbers) into ``totals``."""
    for key, value in counts.items():
        if isinstance(value, dict):
            add_counts(totals.setdefault(key, {}), value)
        else:
            totals[key] = totals.get(key, 0) + value


def latest_rows(rows: pa.Table, newest_first: tuple[str, ...] = ("run_id",)) -> pa.Table:
    """One row per ``song_id`` of ``rows``: the first in descending order of the columns
    ``newest_first`` (run ids start with their start time). A song has several rows when a
    run tried it again after a transient error, or a new run labelled it."""
    if not rows.num_rows:
        return rows
    order = rows.sort_by([("song_id", "ascending"),
                          *((column, "descending") for column in newest_first)])
    ids = order.column("song_id").to_numpy(zero_copy_only=False)
    return order.filter(pa.array(np.concatenate([[True], ids[1:] != ids[:-1]])))
