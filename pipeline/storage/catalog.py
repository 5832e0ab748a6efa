"""Catalogs: a file, a folder or a manifest (CSV/Parquet), local or on an object store."""

from __future__ import annotations

import dataclasses
import posixpath

import pandas as pd

from pipeline.errors import CatalogError
from pipeline.storage import fs as fsio
from pipeline.storage.audio import AUDIO_EXTENSIONS

SPLITS = ("train", "valid", "test")
_MANIFEST_EXTENSIONS = (".csv", ".parquet", ".pq")


@dataclasses.dataclass(frozen=True)
class Song:
    """One catalog entry; ``split`` is None when the song is outside every split."""

    song_id: str
    uri: str
    label: str | None = None
    artist: str | None = None
    split: str | None = None


def load_catalog(source: str, *, labels_from_folders: bool = False) -> list[Song]:
    """Every song of a catalog, validated (unique song_ids) before any work starts."""
    source = str(source).rstrip("/") or "/"
    fs, path = fsio.url_to_fs(source)
    if not fs.exists(path):
        raise CatalogError(f"catalog not found: {source}")
    if fs.isdir(path):
        songs = _from_folder(fs, path, source, labels_from_folders)
    elif path.lower().endswith(_MANIFEST_EXTENSIONS):
        songs = _from_manifest(fs, path, source)
    elif path.lower().endswith(AUDIO_EXTENSIONS):
        songs = [Song(song_id=posixpath.splitext(posixpath.basename(path))[0], uri=source)]
    else:
        raise CatalogError(f"{source} is neither a folder, a manifest (.csv/.parquet) "
                           f"nor an audio file ({', '.join(AUDIO_EXTENSIONS)})")
    if not songs:
        raise CatalogError(f"catalog {source} contains no audio files")
    _check_unique(songs, source)
    return songs


def _from_folder(fs, root: str, source: str, labels_from_folders: bool) -> list[Song]:
    songs = []
    for path in sorted(fs.find(root)):
        if not path.lower().endswith(AUDIO_EXTENSIONS):
            continue
        rel = posixpath.relpath(path, root)
        label = None
        if labels_from_folders:
            if "/" not in rel:
                raise CatalogError(f"--labels-from-folders needs root/<label>/<file>, "
                                   f"but {rel} is directly under {source}")
            label = rel.split("/", 1)[0]
        songs.append(Song(song_id=posixpath.splitext(rel)[0],
                          uri=fsio.unstrip(path, source), label=label))
    return songs


def _from_manifest(fs, path: str, source: str) -> list[Song]:
    try:
        with fs.open(path, "rb") as f:
            table = pd.read_csv(f, dtype=str, keep_default_na=False) if path.lower().endswith(".csv") \
                else pd.read_parquet(f).astype(str)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise CatalogError(f"cannot read manifest {source}: {e}") from e
    if "uri" not in table.columns:
        raise CatalogError(f"manifest {source} needs a 'uri' column; it has {list(table.columns)}")
    base = source.rsplit("/", 1)[0] if "/" in source else "."
    songs = []
    for i, row in enumerate(table.to_dict("records")):
        uri = (row.get("uri") or "").strip()
        if not uri:
            raise CatalogError(f"manifest {source} row {i + 2}: empty uri")
        relative = "://" not in uri and not uri.startswith("/")
        full = fsio.join(base, uri) if relative else uri
        default_id = posixpath.splitext(uri if relative else uri.split("://", 1)[-1].lstrip("/"))[0]
        split = _clean(row.get("split"))
        if split is not None and split not in SPLITS:
            raise CatalogError(f"manifest {source} row {i + 2}: split {split!r} is not one of "
                               f"{SPLITS} or empty")
        songs.append(Song(song_id=_clean(row.get("song_id")) or default_id, uri=full,
                          label=_clean(row.get("label")), artist=_clean(row.get("artist")),
                          split=split))
    return songs


def _clean(value) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return None if value in ("", "nan", "None", "NaN") else value


def _check_unique(songs: list[Song], source: str) -> None:
    seen, dupes = set(), []
    for s in songs:
        if s.song_id in seen:
            dupes.append(s.song_id)
        seen.add(s.song_id)
    if dupes:
        shown = ", ".join(sorted(set(dupes))[:5])
        raise CatalogError(f"catalog {source} has {len(dupes)} duplicate song_id(s): {shown}")
