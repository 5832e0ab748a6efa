"""Feature directories: Parquet parts of frame rows, committed by a Delta table of songs.

Layout of a feature directory (local or URI)::

    _spec.json                       FeatureSpec + fingerprint + library versions
    part-<run>-<task>.parquet        frame rows of the songs of one extract task
    _songs/                          Delta table, one row per song: the part that holds its
                                     frames (and how many), or its error and message

A part exists once an index row naming it is committed: a task killed mid-write, a retried
task or a killed run leave files no commit names, which every reader ignores. Each commit
adds one index file (its tasks' index files combined), so reading what a directory holds
costs what reading a Delta table costs (its last checkpoint and the commits since) plus a
file per commit, not a read per part. The parts are plain Parquet
with Arrow's fixed-shape tensor columns; ``FeatureStore.parts`` (or the ``_songs`` table
read with deltalake) says which to read.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import CatalogError, SpecMismatchError
from pipeline.features.spec import spec_from_record
from pipeline.storage import fs as fsio
from pipeline.storage.delta import DeltaLog, add_counts, conform, latest_rows, write_file

log = logging.getLogger(__name__)

SPEC_FILE = "_spec.json"
INDEX_DIR = "_songs"
ERROR_SCHEMA = pa.schema([("song_id", pa.string()), ("uri", pa.string()),
                          ("error", pa.string()), ("message", pa.string())])
# attempt: the song's try number (1 for a first try; see pipeline.retry)
INDEX_SCHEMA = pa.schema([("song_id", pa.string()), ("uri", pa.string()), ("part", pa.string()),
                          ("frames", pa.int32()), ("error", pa.string()), ("message", pa.string()),
                          ("run_id", pa.string()), ("attempt", pa.int32())])
_ROW_GROUP_BYTES = 512 * 1024  # a row group closes at the first song end past this size


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


class FeatureStore:
    """A feature directory (local or URI): ``_spec.json``, Parquet parts of frame rows, and
    the ``_songs/`` Delta table that commits them, one row per song."""

    def __init__(self, root: str):
        self.root = str(root).rstrip("/")
        self.fs, self.path = fsio.url_to_fs(self.root)
        self.index = DeltaLog(fsio.join(self.root, INDEX_DIR), INDEX_SCHEMA)

    def _uri(self, *parts: str) -> str:
        return fsio.join(self.root, *parts)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def read_spec(self):
        """The FeatureSpec or EmbeddingSpec the directory was made with."""
        uri = self._uri(SPEC_FILE)
        if not fsio.exists(uri):
            raise CatalogError(f"{self.root} is not a feature directory (no {SPEC_FILE}); "
                               f"run `genres extract` first")
        self.check_not_legacy()
        return spec_from_record(json.loads(fsio.read_text(uri)))

    def check_not_legacy(self) -> None:
        """Feature directories of genres 0.1 (``_commits/`` records per part) are refused."""
        if (fsio.exists(self._uri("_commits"))
                and not fsio.exists(self._uri(INDEX_DIR, "_delta_log"))):
            raise CatalogError(f"{self.root} holds features of an earlier genres (parts with "
                               f"_commits/ records); convert it once with `genres migrate "
                               f"{self.root}`")

    def prepare(self, spec, *, overwrite: bool = False) -> None:
        """Create the directory for ``spec``; refuse to mix specs unless ``overwrite``."""
        if overwrite and self.fs.exists(self.path):
            fsio.check_ours(self.root, SPEC_FILE, "a feature directory")
            self.fs.rm(self.path, recursive=True)
        spec_uri = self._uri(SPEC_FILE)
        if fsio.exists(spec_uri):
            old = self.read_spec()
            if old.fingerprint() != spec.fingerprint():
                raise SpecMismatchError(
                    f"{self.root} holds features of another spec ({old.fingerprint()} != "
                    f"{spec.fingerprint()}); pass --overwrite or choose another --out")
        else:
            self.check_not_legacy()
            record = {**spec.to_record(), "versions": _versions(),
                      "schema": {name: list(shape) for name, shape in spec.columns().items()}}
            fsio.write_bytes_atomic(spec_uri, json.dumps(record, indent=2).encode())
        self.index.create()

    def write_part(self, name: str, rows: pa.Table, errors: pa.Table, *, run_id: str,
                   uris: dict[str, str] | None = None, attempts: dict[str, int] | None = None,
                   **counts) -> dict:
        """Write a part's frame rows (``part_uri(name)``, unless there are none) and its index
        file (a row per song: its frames, or its error; ``uris`` and ``attempts``, its try
        number, by song_id); the index file's add row, which :meth:`commit` (or a run's
        Committer) makes part of the directory. ``counts``: more figures for the run's
        summary (e.g. audio_seconds)."""
        songs = pc.value_counts(rows.column("song_id")) if rows.num_rows else None
        ids = songs.field("values").to_pylist() if songs is not None else []
        frames = songs.field("counts").to_pylist() if songs is not None else []
        if rows.num_rows:
            fsio.write_bytes_atomic(self.part_uri(name), _parquet_bytes(rows))
        index = index_rows(name, ids, frames, errors, run_id=run_id, uris=uris,
                           attempts=attempts)
        return self.write_index(name, index, **counts)

    def write_index(self, name: str, index: pa.Table, **counts) -> dict:
        """Write the index file ``name`` (INDEX_SCHEMA rows); its add row."""
        errors = pc.drop_null(index.column("error"))
        kinds = {k["values"]: k["counts"] for k in pc.value_counts(errors).to_pylist()} \
            if len(errors) else {}
        ok = index.num_rows - len(errors)
        frames = int(pc.sum(index.column("frames")).as_py() or 0)
        return write_file(self.index.root, index, name=name,
                          counts={"ok": ok, "frames": frames, "errors": kinds, **counts})

    def combine(self, adds: list[dict], *, name: str) -> dict:
        """The uncommitted index files ``adds`` as one index file ``name`` (a commit's worth
        of songs in one file: readers of the index open a file per commit, not per part)."""
        index = pa.concat_tables([self._read_index(add) for add in adds])
        counts: dict = {}
        for add in adds:
            add_counts(counts, json.loads(add["counts"]))
        return self.write_index(name, index, **{k: v for k, v in counts.items()
                                                if k not in ("ok", "frames", "errors")})

    def without_songs(self, add: dict, song_ids: set[str], *, name: str, run_id: str) -> dict | None:
        """An uncommitted index file (its add row) again as ``name`` without the songs
        ``song_ids``, each part that held some of them rewritten without them: the new add
        row, None when no song is left, or ``add`` itself when it holds none of them."""
        index = self._read_index(add)
        drop = pc.is_in(index.column("song_id"), pa.array(sorted(song_ids), pa.string()))
        if not pc.any(drop).as_py():
            return add
        touched = set(pc.drop_null(index.filter(drop).column("part")).to_pylist())
        index = index.filter(pc.invert(drop))
        if not index.num_rows:
            return None
        renamed = {}
        for part in sorted(touched):
            rows = self.read_part(part)
            rows = rows.filter(pc.is_in(rows.column("song_id"), index.column("song_id")))
            if rows.num_rows:
                renamed[part] = f"{part}-{name}"
                fsio.write_bytes_atomic(self.part_uri(renamed[part]), _parquet_bytes(rows))
        parts = [renamed.get(p, p) for p in index.column("part").to_pylist()]
        index = index.set_column(index.schema.get_field_index("part"), "part",
                                 pa.array(parts, pa.string()))
        extra = {k: v for k, v in json.loads(add["counts"]).items()
                 if k not in ("ok", "frames", "errors")}
        return self.write_index(name, index, **extra)

    def _read_index(self, add: dict) -> pa.Table:
        uri = fsio.join(self.index.root, add["path"])
        return conform(pq.read_table(pa.BufferReader(fsio.read_bytes(uri))), INDEX_SCHEMA)

    def commit(self, adds: list[dict], *, run_id: str) -> int:
        """Commit index files (their add rows) at the latest version, with no check for
        other runs' songs: for one writer (tests, tools); runs use a Committer."""
        return self.index.commit(adds, version=self.index.version(), run_id=run_id)

    def index_files(self, version: int | None = None) -> list[str]:
        """URIs of the committed index files (one per part)."""
        return self.index.files(version)

    def parts(self, version: int | None = None) -> list[str]:
        """Names of the committed parts (sorted), read from the index's ``part`` column."""
        parts = self.index.table(version).to_pyarrow_table(columns=["part"]).column("part")
        return sorted(pc.unique(pc.drop_null(parts)).to_pylist())

    def read_index(self, columns: list[str] | None = None) -> pa.Table:
        """Every committed song row (a small directory's: tests, tools)."""
        return self.index.table().to_pyarrow_table(columns=columns)

    def read_errors(self) -> pa.Table:
        """The songs that could not be used: ``song_id, uri, error, message`` (of each song
        its latest row: a transient error that a later run overcame is not listed)."""
        index = latest_rows(self.read_index([*ERROR_SCHEMA.names, "run_id"]))
        return index.filter(pc.is_valid(index.column("error"))).select(ERROR_SCHEMA.names)

    def read_frames(self, columns: list[str] | None = None) -> pa.Table:
        """Every committed frame row (a small directory's: tests, tools)."""
        parts = self.parts()
        if not parts:
            raise CatalogError(f"{self.root} has no committed feature rows")
        return pa.concat_tables([self.read_part(p, columns) for p in parts])

    def part_uri(self, part: str) -> str:
        """URI of a part's rows file (``part`` as named in the index)."""
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


def _redact(uri: str | None) -> str | None:
    return None if uri is None else fsio.redact(uri)


def index_rows(part: str, ids: list[str], frames: list[int], errors: pa.Table, *, run_id: str,
               uris: dict[str, str] | None = None,
               attempts: dict[str, int] | None = None) -> pa.Table:
    """INDEX_SCHEMA rows of one part: its songs ``ids`` with their ``frames``, then the
    songs of ``errors`` (ERROR_SCHEMA rows); ``attempts``: each song's try number (None:
    unknown, as in directories of an earlier genres)."""
    uris, attempts = uris or {}, attempts or {}
    n_ok, n_err = len(ids), errors.num_rows
    every = list(ids) + errors.column("song_id").to_pylist()
    return pa.table({
        "song_id": pa.array(every, pa.string()),
        # stored without query strings: a presigned URL's signature is a secret
        "uri": pa.array([_redact(uris.get(s)) for s in ids]
                        + [_redact(u) for u in errors.column("uri").to_pylist()], pa.string()),
        "part": pa.array([part] * n_ok + [None] * n_err, pa.string()),
        "frames": pa.array(list(frames) + [0] * n_err, pa.int32()),
        "error": pa.array([None] * n_ok + errors.column("error").to_pylist(), pa.string()),
        "message": pa.array([None] * n_ok + errors.column("message").to_pylist(), pa.string()),
        "run_id": pa.array([run_id] * (n_ok + n_err), pa.string()),
        "attempt": pa.array([attempts.get(s) for s in every], pa.int32()),
    }, schema=INDEX_SCHEMA)


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
    songs skip the others (:meth:`FeatureStore.read_part`)."""
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
