"""Label tables: committed parts of song-level labels, one commit record per part.

Each commit record names the ``model_id`` and ``aggregator`` of its rows, so incremental
tagging knows which songs a model has already labelled without reading the rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.storage.shards import CommittedParts

LABEL_SCHEMA = pa.schema([
    ("song_id", pa.string()), ("uri", pa.string()), ("genre", pa.string()),
    ("confidence", pa.float32()), ("probabilities", pa.map_(pa.string(), pa.float32())),
    ("top_tags", pa.list_(pa.string())),
    ("n_frames", pa.int32()), ("aggregator", pa.string()), ("model_id", pa.string()),
    ("scored_at", pa.timestamp("s", tz="UTC")),
])


class LabelStore(CommittedParts):
    """A labels directory (local or URI)."""

    def labelled(self, model_id: str, aggregator: str) -> set[str]:
        """Songs already labelled (or recorded as failed) by this model and aggregator."""
        return self.done_song_ids(
            where=lambda r: r.get("model_id") == model_id and r.get("aggregator") == aggregator)

    def read_labels(self) -> pa.Table:
        table = self.read_rows()
        return table if table is not None else LABEL_SCHEMA.empty_table()

    def latest(self, model_id: str | None = None) -> pa.Table:
        """One row per song: its most recent label (of ``model_id`` only, if given).

        Most recent is the latest ``scored_at``; a tie goes to the later part.
        """
        table = self.read_labels()
        if model_id is not None:
            table = table.filter(pc.equal(table.column("model_id"), model_id))
        if not table.num_rows:
            return table
        table = table.append_column("_order", pa.array(np.arange(table.num_rows)))
        table = table.sort_by([("song_id", "ascending"), ("scored_at", "descending"),
                               ("_order", "descending")])
        ids = table.column("song_id").to_numpy(zero_copy_only=False)
        first = np.concatenate([[True], ids[1:] != ids[:-1]])
        return table.filter(pa.array(first)).drop_columns(["_order"])
