"""Feature tables: numbered Parquet shards, each committed by a record of the songs it covers.

Layout of a feature directory (local or URI)::

    _spec.json                 FeatureSpec + fingerprint + library versions
    part-00007.parquet         frame rows of the songs of shard 7
    _errors/part-00007.parquet error rows (song_id, uri, error, message) of shard 7
    _commits/part-00007.json   written last: the shard exists only once this exists

Readers consider committed shards only, so a task killed mid-write leaves nothing visible,
and a re-run skips every song named in a commit record.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import CatalogError, SpecMismatchError
from pipeline.features.spec import spec_from_record
from pipeline.storage import fs as fsio

log = logging.getLogger(__name__)

SPEC_FILE = "_spec.json"
ERROR_SCHEMA = pa.schema([("song_id", pa.string()), ("uri", pa.string()),
                          ("error", pa.string()), ("message", pa.string())])
_PART = re.compile(r"part-(\d{5,})\.(?:json|parquet)$")
_ROW_GROUP_BYTES = 512 * 1024  # a row group closes at the first song end past this size


def part_name(index: int) -> str:
    return f"part-{index:05d}"


def tensor_array(values: np.ndarray) -> pa.Array:
    """Arrow-native fixed-shape tensor column from an array [rows, *shape] (rows may be 0)."""
    values = np.ascontiguousarray(values)
    if values.shape[0]:
        return pa.FixedShapeTensorArray.from_numpy_ndarray(values)
    value_type = pa.from_numpy_dtype(values.dtype)
    size = int(np.prod(values.shape[1:]))
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(value_type, list(values.shape[1:])),
                                          pa.array([], type=pa.list_(value_type, size)))


def tensor_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Numpy array [rows, *shape] from a fixed-shape tensor column."""
    if isinstance(column, pa.ChunkedArray):
        chunks = [c.to_numpy_ndarray() for c in column.chunks if len(c)]
        if not chunks:
            shape = column.type.shape
            return np.zeros((0, *shape), dtype=column.type.value_type.to_pandas_dtype())
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    return column.to_numpy_ndarray()


def tensor_rows(column: pa.ChunkedArray, keep: np.ndarray, dtype=None) -> np.ndarray:
    """Numpy array [chosen rows, *shape] of a fixed-shape tensor column's rows where ``keep``
    (a bool per row), as ``dtype``: one copy, however many chunks (row groups) it has."""
    dtype = np.dtype(dtype or column.type.value_type.to_pandas_dtype())
    out = np.empty((int(np.count_nonzero(keep)), *column.type.shape), dtype)
    start = stop = 0
    for chunk in column.chunks:
        chosen = keep[start:start + len(chunk)]
        start += len(chunk)
        if chosen.any():  # a zero-copy view of the chunk, its chosen rows copied into place
            np.compress(chosen, chunk.to_numpy_ndarray(), axis=0,
                        out=out[stop:stop + int(np.count_nonzero(chosen))])
            stop += int(np.count_nonzero(chosen))
    return out


def frame_schema(spec) -> pa.Schema:
    """Row schema of a feature table: keys, then one fixed-shape tensor per spec column."""
    value = pa.float16() if spec.dtype == "float16" else pa.float32()
    return pa.schema([
        ("song_id", pa.string()), ("frame", pa.int32()), ("start_s", pa.float32()),
        ("label", pa.string()), ("artist", pa.string()), ("split", pa.string()),
        ("padded", pa.bool_()),
        *[(name, pa.fixed_shape_tensor(value, list(shape)))
          for name, shape in spec.columns().items()],
    ], metadata={"genres.spec_fingerprint": spec.fingerprint(), "genres.kind": spec.kind})


class CommittedParts:
    """Numbered Parquet parts with ``_errors/`` rows and ``_commits/`` records (commit last)."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/")
        self.fs, self.path = fsio.url_to_fs(self.root)
        self._commits: dict[int, dict] | None = None  # read once; kept current by write_part

    def _uri(self, *parts: str) -> str:
        return fsio.join(self.root, *parts)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def commits(self) -> dict[int, dict]:
        """Commit records by part index (listed and read once per store object)."""
        if self._commits is None:
            self._commits = {}
            folder = self._path("_commits")
            if self.fs.exists(folder):
                for path in self.fs.ls(folder, detail=False):
                    m = _PART.search(path)
                    if m and path.endswith(".json"):
                        with self.fs.open(path, "r") as f:
                            self._commits[int(m.group(1))] = json.load(f)
        return dict(self._commits)

    def next_index(self) -> int:
        return max(self.commits(), default=-1) + 1

    def remove_uncommitted(self) -> int:
        """Delete part files no commit record vouches for (left by a killed run)."""
        committed = set(self.commits())
        removed = 0
        for folder in (self.path, self._path("_errors")):
            if not self.fs.exists(folder):
                continue
            for path in self.fs.ls(folder, detail=False):
                name = posixpath.basename(path)
                m = _PART.search(name)
                if (m and int(m.group(1)) not in committed) or ".tmp-" in name:
                    self.fs.rm(path)
                    removed += 1
        return removed

    def write_part(self, index: int, rows: pa.Table, errors: pa.Table, **record) -> None:
        """Write a part's rows and error rows, then its commit record (which makes it exist)."""
        name = part_name(index)
        if rows.num_rows:
            fsio.write_bytes_atomic(self._uri(name + ".parquet"), _parquet_bytes(rows))
        if errors.num_rows:
            fsio.write_bytes_atomic(self._uri("_errors", name + ".parquet"), _parquet_bytes(errors))
        record = {"part": name, "rows": rows.num_rows,
                  "songs": sorted(set(rows.column("song_id").to_pylist())),
                  "errors": errors.column("song_id").to_pylist(), **record}
        fsio.write_bytes_atomic(self._uri("_commits", name + ".json"), json.dumps(record).encode())
        if self._commits is not None:
            self._commits[index] = record

    def read_rows(self, columns: list[str] | None = None, *, where=None) -> pa.Table | None:
        """Committed rows (parts whose record satisfies ``where``), in part order; None if none."""
        tables = []
        for index, record in sorted(self.commits().items()):
            if record["rows"] and (where is None or where(record)):
                with self.fs.open(self._path(record["part"] + ".parquet"), "rb") as f:
                    tables.append(pq.read_table(f, columns=columns))
        return pa.concat_tables(tables, promote_options="default") if tables else None

    def part_uri(self, part: str) -> str:
        """URI of a part's rows file (``part`` as named in its commit record)."""
        return self._uri(part + ".parquet")

    def read_part(self, part: str, columns: list[str] | None = None, *, where=None,
                  where_columns: list[str] | None = None) -> pa.Table:
        """The rows of one committed part; with ``where`` (``where_columns`` table -> a bool
        per row), only the row groups that hold a chosen row when they are fewer than half,
        unfiltered (else the whole part).

        Parts keep each song in row groups of its own (:func:`_parquet_bytes`), so a reader
        of some songs (one split of a training set) decodes and fetches little else; a part
        written as one row group is read whole. Each row group read costs its own setup (a
        cnn2d part read group by group took 0.29 ms a row, whole 0.15 ms), so a reader of most
        of a part (the train split) reads all of it.
        """
        with self._open_input(self._path(part + ".parquet")) as f:
            if where is None:
                return pq.read_table(f, columns=columns)
            file = pq.ParquetFile(f)
            chosen = np.asarray(where(file.read(columns=where_columns)), bool)
            bounds = np.cumsum([0] + [file.metadata.row_group(i).num_rows
                                      for i in range(file.num_row_groups)])
            groups = [i for i in range(file.num_row_groups)
                      if chosen[bounds[i]:bounds[i + 1]].any()]
            if 2 * len(groups) > file.num_row_groups:
                return file.read(columns=columns)
            return file.read_row_groups(groups, columns=columns)

    def _open_input(self, path: str):
        """A readable file: Arrow's own for a local path (fsspec's reads run in Python, ~30 %
        of a Parquet part's read time), fsspec's for a URI."""
        if fsio.is_local(self.root):
            return pa.OSFile(path)
        return self.fs.open(path, "rb")

    def read_errors(self) -> pa.Table:
        tables = []
        for index, record in sorted(self.commits().items()):
            if record["errors"]:
                with self.fs.open(self._path("_errors", record["part"] + ".parquet"), "rb") as f:
                    tables.append(pq.read_table(f))
        return pa.concat_tables(tables) if tables else ERROR_SCHEMA.empty_table()

    def done_song_ids(self, *, where=None) -> set[str]:
        """Song ids in frame rows or error rows of committed parts (matching ``where``)."""
        done = set()
        for record in self.commits().values():
            if where is None or where(record):
                done.update(record["songs"])
                done.update(record["errors"])
        return done


class FeatureStore(CommittedParts):
    """A feature directory: ``_spec.json`` plus committed frame shards."""

    def read_spec(self):
        """The FeatureSpec or EmbeddingSpec the directory was made with."""
        uri = self._uri(SPEC_FILE)
        if not fsio.exists(uri):
            raise CatalogError(f"{self.root} is not a feature directory (no {SPEC_FILE}); "
                               f"run `genres extract` first")
        return spec_from_record(json.loads(fsio.read_text(uri)))

    def prepare(self, spec, *, overwrite: bool = False) -> None:
        """Create the directory for ``spec``; refuse to mix specs unless ``overwrite``."""
        if overwrite and self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)
            self._commits = None
        spec_uri = self._uri(SPEC_FILE)
        if fsio.exists(spec_uri):
            old = self.read_spec()
            if old.fingerprint() != spec.fingerprint():
                raise SpecMismatchError(
                    f"{self.root} holds features of another spec ({old.fingerprint()} != "
                    f"{spec.fingerprint()}); pass --overwrite or choose another --out")
            return
        record = {**spec.to_record(), "versions": _versions(),
                  "schema": {name: list(shape) for name, shape in spec.columns().items()}}
        fsio.write_bytes_atomic(spec_uri, json.dumps(record, indent=2).encode())

    def read_frames(self, columns: list[str] | None = None) -> pa.Table:
        """All committed frame rows, in shard order."""
        table = self.read_rows(columns)
        if table is None:
            raise CatalogError(f"{self.root} has no committed feature rows")
        return table


def _versions() -> dict[str, str]:
    """Versions of the libraries that shape the features."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("genres", "librosa", "numpy", "scipy", "soundfile", "soxr", "av", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _parquet_bytes(table: pa.Table) -> bytes:
    """A Parquet file of ``table``, whose rows of one song (neighbours) are in row groups of
    whole songs of about ``_ROW_GROUP_BYTES`` (one song when larger), so that readers of some
    songs skip the others (:meth:`CommittedParts.read_part`)."""
    # Dictionaries, statistics and zstd only for scalar columns: on float tensors they cost
    # 2/3 of the write time, and zstd halved the read speed of a part (log-mel: 0.107 s
    # against 0.052 s for 192 frames, every training epoch) to save 13 % of its size.
    scalar = [f.name for f in table.schema if not isinstance(f.type, pa.ExtensionType)]
    compression = {f.name: "zstd" if f.name in scalar else "none" for f in table.schema}
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, table.schema, compression=compression, use_dictionary=scalar,
                          write_statistics=scalar) as writer:
        for start, stop in _song_groups(table):
            writer.write_table(table.slice(start, stop - start))
    return sink.getvalue()


def _song_groups(table: pa.Table) -> list[tuple[int, int]]:
    """(start, stop) row ranges of whole songs (runs of one song_id), each closed once it
    holds ``_ROW_GROUP_BYTES``; the whole table when it has no song_id column or no rows."""
    if "song_id" not in table.column_names or table.num_rows == 0:
        return [(0, table.num_rows)]
    ids = table.column("song_id").to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]).tolist() + [table.num_rows]
    row_bytes = table.nbytes / table.num_rows
    groups, start = [], 0
    for stop in starts[1:]:
        if (stop - start) * row_bytes >= _ROW_GROUP_BYTES or stop == table.num_rows:
            groups.append((start, stop))
            start = stop
    return groups
