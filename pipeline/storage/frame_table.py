"""Frame tables users already have: one row per frame, ``name, label, feature...`` (CSV/Parquet)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd

from pipeline.errors import ParameterError
from pipeline.features.spec import TableSpec
from pipeline.storage import fs as fsio


@dataclasses.dataclass
class FrameTable:
    """x [n_frames, n_features] float32, with the song_id and label of every row."""

    spec: TableSpec
    x: np.ndarray
    song_ids: np.ndarray
    labels: np.ndarray


def read_frame_table(source: str, *, name_column: str, song_pattern: str,
                     label_column: str = "label") -> FrameTable:
    """Read a frame table; every numeric column other than the name and label is a feature.

    ``song_pattern`` is a regex searched in each name: its ``song`` group (or its first group,
    or the whole match) is the song_id, so ``jazz.00012.4.wav`` with ``^(.+)\\.\\d+\\.wav$``
    is frame 4 of song ``jazz.00012``.
    """
    try:
        pattern = re.compile(song_pattern)
    except re.error as e:
        raise ParameterError(f"--song-pattern {song_pattern!r} is not a valid regex: {e}") from None
    fs, path = fsio.url_to_fs(source)
    if not fs.exists(path):
        raise ParameterError(f"frame table not found: {source}")
    with fs.open(path, "rb") as f:
        table = pd.read_parquet(f) if path.lower().endswith((".parquet", ".pq")) else pd.read_csv(f)
    for column, flag in ((name_column, "--name-column"), (label_column, "--label-column")):
        if column not in table.columns:
            raise ParameterError(f"{source} has no column {column!r} ({flag}); "
                                 f"columns: {', '.join(map(str, table.columns[:8]))}...")
    features = [c for c in table.columns
                if c not in (name_column, label_column) and pd.api.types.is_numeric_dtype(table[c])]
    song_ids = []
    for name in table[name_column].astype(str):
        found = pattern.search(name)
        if not found:
            raise ParameterError(f"--song-pattern {song_pattern!r} does not match the name "
                                 f"{name!r} in {source}")
        groups = found.groupdict().get("song") or (found.group(1) if pattern.groups else None)
        song_ids.append(groups or found.group(0))
    x = table[features].to_numpy(np.float32)
    if not np.isfinite(x).all():
        bad = table[name_column][~np.isfinite(x).all(axis=1)].iloc[0]
        raise ParameterError(f"{source}: row {bad!r} has a missing or non-finite feature")
    spec = TableSpec(features=tuple(features), name_column=name_column, song_pattern=song_pattern)
    return FrameTable(spec=spec, x=x, song_ids=np.array(song_ids, dtype=object),
                      labels=table[label_column].astype(str).to_numpy(dtype=object))
