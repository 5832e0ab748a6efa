"""A run's sink: the add rows its write tasks return, committed by the driver as they come.

Workers write the files; only their add rows (a few hundred bytes per file) reach the
driver, which commits them in batches (:class:`pipeline.storage.delta.Committer`). When
another run committed some of the same songs first, Ray tasks rewrite this run's pending
files without them before the commit.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import GenresError
from pipeline.storage import fs as fsio
from pipeline.storage.delta import ADD_SCHEMA, Committer

log = logging.getLogger(__name__)


def commit_stream(written, committer: Committer, *, progress=None) -> dict:
    """Commit the add rows of the dataset ``written`` as they arrive; the committed totals.

    ``progress(counts)`` is told each file's counts. When the stream fails (a task out of
    retries), what arrived before is still committed, and a GenresError says to re-run.
    """
    import json

    try:
        for batch in written.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.select(ADD_SCHEMA.names).to_pylist()
            if progress is not None:
                for row in rows:
                    progress(json.loads(row["counts"]))
            committer.add(rows)
    except Exception as e:
        import ray

        committer.flush()
        if isinstance(e, (ray.exceptions.RayError, ray.data.exceptions.UserCodeException)):
            raise GenresError(f"a task failed for good ({_cause(e)}); what finished is committed "
                              f"({committer.commits} commit(s)): re-run to do the rest") from e
        raise
    committer.flush()
    return committer.totals


def resolver(rewrite, *, key_columns: list[str], matches):
    """A Committer's ``resolve``: Ray tasks call ``rewrite(add, song_ids, name)`` on each
    pending file, with the song ids of the other runs' files for which ``matches`` (a table of
    ``key_columns`` -> bool per row) holds; a file that holds none of them stays as it is.

    Each file of theirs is read once, by a task that adds its song ids to one sorted array
    in the object store; the driver keeps that array's reference, and the rewrite tasks read
    the array, never their files again (re-reading every file of theirs at every commit was
    quadratic in the length of the overlap)."""
    import ray

    @ray.remote(num_cpus=0, max_retries=3)
    def collect(uris: list[str], known: pa.Array | None) -> pa.Array:
        ids = [known] if known is not None else []
        for uri in uris:
            keys = pq.read_table(pa.BufferReader(fsio.read_bytes(uri)), columns=key_columns)
            ids.append(keys.filter(matches(keys)).column("song_id").combine_chunks())
        return pc.unique(pa.concat_arrays(ids)).sort() if ids else pa.array([], pa.string())

    # num_cpus=0: the actors of the run may hold every CPU while the driver waits for these
    @ray.remote(num_cpus=0, max_retries=3)
    def one(add: dict, theirs: pa.Array, name: str):
        return rewrite(add, set(theirs.to_pylist()), name)

    state = {"ids": None}

    def resolve(pending: list[dict], theirs: list[dict]) -> list[dict]:
        if theirs:
            log.warning("another run committed %d file(s) of this table meanwhile: dropping the "
                        "songs it did first from %d pending file(s)", len(theirs), len(pending))
            state["ids"] = collect.remote([a["path"] for a in theirs], state["ids"])
        names = [f"{_stem(add['path'])}-r{i}" for i, add in enumerate(pending)]
        done = ray.get([one.remote(add, state["ids"], name) for add, name in zip(pending, names)])
        return [add for add in done if add is not None]

    return resolve


def _stem(path: str) -> str:
    return path.rsplit("/", 1)[-1][:-len(".parquet")]


def _cause(error: Exception) -> str:
    """The innermost error's first line."""
    while error.__cause__ is not None:
        error = error.__cause__
    return (str(error).strip().splitlines() or [type(error).__name__])[-1][:200]


def final(keys: pa.Table) -> pa.Array:
    """``matches`` for feature index files: the songs another run finished for good (a
    transient error there is no reason to drop this run's newer try)."""
    from pipeline.runtime.catalog import finished

    return finished(keys)


def aggregator_is(aggregator: str):
    """``matches`` for label files: final rows (see :func:`final`) of this aggregator."""
    return lambda keys: pc.and_(pc.equal(keys.column("aggregator"), aggregator), final(keys))
