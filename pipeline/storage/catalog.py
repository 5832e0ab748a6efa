"""Catalogs: a file, a folder or a manifest (CSV/Parquet), local or on an object store.

A catalog becomes rows of :data:`CATALOG_SCHEMA` batch by batch: :func:`manifest_rows` turns
a batch of manifest rows into catalog rows (defaults, cleaning, validation) and
:func:`folder_rows` a batch of listed paths, so that ``pipeline.runtime.catalog`` can run them
over a catalog of any size in Ray Data, and :func:`load_catalog` over a small one in memory.
"""

from __future__ import annotations

import dataclasses
import posixpath

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import CatalogError
from pipeline.storage import fs as fsio
from pipeline.storage.audio import AUDIO_EXTENSIONS

SPLITS = ("train", "valid", "test")
MANIFEST_EXTENSIONS = (".csv", ".parquet", ".pq")
CATALOG_SCHEMA = pa.schema([("song_id", pa.string()), ("uri", pa.string()),
                            ("label", pa.string()), ("artist", pa.string()),
                            ("split", pa.string())])
_EMPTY = ["", "nan", "None", "NaN"]  # how an empty cell reads once a manifest is all strings


@dataclasses.dataclass(frozen=True)
class Song:
    """One catalog entry; ``split`` is None when the song is outside every split."""

    song_id: str
    uri: str
    label: str | None = None
    artist: str | None = None
    split: str | None = None
    tries: int = 0  # earlier tries that failed for a reason that may pass (pipeline.retry)


@dataclasses.dataclass(frozen=True)
class CatalogSource:
    """What a catalog URI is: ``kind`` ``file`` (one audio file), ``folder`` or ``manifest``;
    ``path`` is the filesystem's own path of ``source``."""

    source: str
    kind: str
    path: str

    @property
    def base(self) -> str:
        """The folder relative manifest URIs resolve against."""
        return self.source.rsplit("/", 1)[0] if "/" in self.source else "."


def describe_catalog(source: str) -> CatalogSource:
    """Which kind of catalog ``source`` is (one stat, no listing)."""
    source = str(source).rstrip("/") or "/"
    fs, path = fsio.url_to_fs(source)
    if not fs.exists(path):
        raise CatalogError(f"catalog not found: {source}")
    if fs.isdir(path):
        return CatalogSource(source, "folder", path)
    if path.lower().endswith(MANIFEST_EXTENSIONS):
        return CatalogSource(source, "manifest", path)
    if path.lower().endswith(AUDIO_EXTENSIONS):
        return CatalogSource(source, "file", path)
    raise CatalogError(f"{source} is neither a folder, a manifest (.csv/.parquet) "
                       f"nor an audio file ({', '.join(AUDIO_EXTENSIONS)})")


def file_rows(catalog: CatalogSource) -> pa.Table:
    """The catalog of one audio file: its name without extension is its song_id."""
    song_id = posixpath.splitext(posixpath.basename(catalog.path))[0]
    return _table({"song_id": [song_id], "uri": [catalog.source]}, 1)


def folder_rows(paths: list[str], *, catalog: CatalogSource,
                labels_from_folders: bool = False) -> pa.Table:
    """Catalog rows of the audio files among ``paths`` (filesystem paths under the folder);
    song_id is the path relative to the folder without extension, the label (with
    ``labels_from_folders``) its first folder."""
    paths = sorted(p for p in paths if p.lower().endswith(AUDIO_EXTENSIONS))
    rels = [posixpath.relpath(p, catalog.path) for p in paths]
    labels = None
    if labels_from_folders:
        flat = next((rel for rel in rels if "/" not in rel), None)
        if flat is not None:
            raise CatalogError(f"--labels-from-folders needs root/<label>/<file>, "
                               f"but {flat} is directly under {catalog.source}")
        labels = [rel.split("/", 1)[0] for rel in rels]
    return _table({"song_id": [posixpath.splitext(rel)[0] for rel in rels],
                   "uri": [fsio.unstrip(p, catalog.source) for p in paths],
                   "label": labels}, len(paths))


def manifest_rows(batch: pa.Table, *, catalog: CatalogSource) -> pa.Table:
    """Catalog rows of a batch of manifest rows (every column a string): relative uris
    resolved against the manifest's folder, a default song_id (the uri without extension,
    relative to that folder or to its scheme), empty cells as nulls. Raises CatalogError on
    an empty uri or a split outside ``train``/``valid``/``test``."""
    if "uri" not in batch.column_names:
        raise CatalogError(f"manifest {catalog.source} needs a 'uri' column; it has "
                           f"{batch.column_names}")
    columns = {name: _clean(batch.column(name)) if name in batch.column_names else None
               for name in CATALOG_SCHEMA.names}
    uri = columns["uri"]
    if uri.null_count:
        raise CatalogError(f"manifest {catalog.source}: {uri.null_count} row(s) with an "
                           f"empty uri")
    split = columns["split"]
    if split is not None:
        bad = pc.unique(pc.filter(split, pc.invert(pc.is_in(split, pa.array(SPLITS))))
                        .drop_null()).to_pylist()
        if bad:
            raise CatalogError(f"manifest {catalog.source}: split {bad[0]!r} is not one of "
                               f"{SPLITS} or empty")
    absolute = pc.or_(pc.match_substring(uri, "://"), pc.starts_with(uri, "/"))
    prefix = catalog.base.rstrip("/") + "/"
    columns["uri"] = _normalised(
        pc.if_else(absolute, uri, pc.binary_join_element_wise(prefix, uri, "")), catalog)
    uri = _normalised(uri, catalog)
    # song_id default: the uri as written (relative, or without its scheme and leading
    # slashes) without the extension of its last component
    bare = pc.replace_substring_regex(uri, r"^[A-Za-z][A-Za-z0-9+.-]*://", "")
    bare = pc.if_else(absolute, pc.utf8_ltrim(bare, "/"), uri)
    default_id = pc.replace_substring_regex(bare, r"^(.*[^/])\.[^./]*$", r"\1")
    song_id = columns["song_id"]
    columns["song_id"] = default_id if song_id is None else pc.coalesce(song_id, default_id)
    return _table(columns, batch.num_rows)


def _normalised(uris, catalog: CatalogSource):
    """``uris`` with ``.`` and ``..`` segments resolved: object stores do not resolve them
    (``s3://b/a/../x.ogg`` is another key than ``s3://b/x.ogg``), and one song must not have two
    names. A URI that climbs above its bucket or root is refused (CatalogError)."""
    odd = pc.or_(pc.match_substring(uris, "/."), pc.starts_with(uris, "."))
    if not pc.any(odd).as_py():
        return uris
    return pa.array([normalise_uri(u, catalog.source) for u in uris.to_pylist()], pa.string())


def normalise_uri(uri: str, source: str = "the catalog") -> str:
    """One URI or path with ``.`` and ``..`` resolved (see :func:`_normalised`); a relative
    path may keep leading ``..`` (it is resolved against its manifest's folder first)."""
    scheme, sep, path = uri.partition("://") if "://" in uri else ("", "", uri)
    if sep:  # scheme://bucket/key: the bucket stays
        root, _, path = path.partition("/")
        head = f"{scheme}://{root}/"
    else:
        head = "/" if uri.startswith("/") else ""
    norm = posixpath.normpath(path.lstrip("/")) if path.strip("/") else ""
    if norm == ".":
        norm = ""
    if head and (norm == ".." or norm.startswith("../")):
        raise CatalogError(f"{source}: {fsio.redact(uri)} climbs above its "
                           f"{'bucket' if sep else 'root'} with '..'")
    return head + norm + ("/" if path.endswith("/") and norm else "")


def load_catalog(source: str, *, labels_from_folders: bool = False) -> list[Song]:
    """Every song of a small catalog, in memory, validated (unique song_ids) before any work
    starts. Catalogs of any size go through ``pipeline.runtime.catalog`` instead."""
    catalog = describe_catalog(source)
    fs, _ = fsio.url_to_fs(catalog.source)
    if catalog.kind == "folder":
        rows = folder_rows(fs.find(catalog.path), catalog=catalog,
                           labels_from_folders=labels_from_folders)
    elif catalog.kind == "manifest":
        rows = manifest_rows(read_manifest(catalog), catalog=catalog)
    else:
        rows = file_rows(catalog)
    if not rows.num_rows:
        raise CatalogError(f"catalog {catalog.source} contains no audio files")
    check_unique(rows.column("song_id"), catalog.source)
    return [Song(**row) for row in rows.to_pylist()]


def read_manifest(catalog: CatalogSource) -> pa.Table:
    """A whole manifest file, every column as a string (small catalogs only)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    fs, _ = fsio.url_to_fs(catalog.source)
    try:
        with fs.open(catalog.path, "rb") as f:
            if catalog.path.lower().endswith(".csv"):
                header = manifest_header(catalog)
                return pcsv.read_csv(f, convert_options=csv_convert_options(header))
            table = pq.read_table(f)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as e:
        raise CatalogError(f"cannot read manifest {catalog.source}: {e}") from e
    return as_strings(table)


def manifest_header(catalog: CatalogSource) -> list[str]:
    """The column names of a CSV manifest (its first line)."""
    import csv
    import io

    fs, _ = fsio.url_to_fs(catalog.source)
    try:
        with fs.open(catalog.path, "rb") as f:
            first = f.read(1 << 20).split(b"\n", 1)[0].decode("utf-8")
        return next(csv.reader(io.StringIO(first)))
    except (UnicodeDecodeError, StopIteration, OSError, csv.Error) as e:
        raise CatalogError(f"cannot read manifest {catalog.source}: {e or 'empty file'}") from e


def csv_convert_options(header: list[str]):
    """Arrow CSV options that read every column as a string and empty cells as ``""``."""
    import pyarrow.csv as pcsv

    return pcsv.ConvertOptions(column_types={name: pa.string() for name in header},
                               strings_can_be_null=False, quoted_strings_can_be_null=False)


def as_strings(table: pa.Table) -> pa.Table:
    """Every column cast to string (a Parquet manifest may hold numbers or categories)."""
    columns = []
    for column in table.columns:
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        columns.append(column if pa.types.is_string(column.type) else column.cast(pa.string()))
    return pa.table(columns, names=table.column_names)


def check_unique(song_ids: pa.ChunkedArray | pa.Array, source: str) -> None:
    """Raise CatalogError naming up to 5 song_ids that occur more than once."""
    counts = pc.value_counts(song_ids)
    dupes = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(dupes):
        raise duplicates_error(source, len(dupes), dupes.to_pylist()[:5])


def duplicates_error(source: str, n: int, examples: list[str]) -> CatalogError:
    shown = ", ".join(sorted(examples)[:5])
    return CatalogError(f"catalog {source} has {n} duplicate song_id(s): {shown}")


def _clean(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Strings stripped of surrounding whitespace, empty cells as nulls."""
    stripped = pc.utf8_trim_whitespace(column.cast(pa.string()))
    return pc.if_else(pc.is_in(stripped, pa.array(_EMPTY)), pa.scalar(None, pa.string()),
                      stripped)


def _table(columns: dict, n: int) -> pa.Table:
    """A CATALOG_SCHEMA table; a column given as None is all nulls."""
    arrays = [pa.nulls(n, pa.string()) if columns.get(f.name) is None
              else (columns[f.name] if isinstance(columns[f.name], (pa.Array, pa.ChunkedArray))
                    else pa.array(columns[f.name], pa.string()))
              for f in CATALOG_SCHEMA]
    return pa.table(arrays, schema=CATALOG_SCHEMA)
