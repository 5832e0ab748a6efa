"""Label tables: committed parts of song-level labels, one commit record per part.

Each commit record names the ``model_id`` and ``aggregator`` of its rows, so incremental
tagging knows which songs a model has already labelled without reading the rows.
"""

from __future__ import annotations

import pyarrow as pa

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
