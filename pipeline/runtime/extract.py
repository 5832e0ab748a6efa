"""Extraction on Ray Data: catalog -> songs not yet done (anti-join) -> extract tasks that
write parts -> the driver commits their index files as they finish."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import uuid
import warnings

import pyarrow as pa

from pipeline.errors import ParameterError
from pipeline.extract import extract_shard
from pipeline.features import FeatureSpec
from pipeline.runtime.catalog import catalog_dataset, partitions, without
from pipeline.runtime.commit import commit_stream, final, resolver
from pipeline.runtime.session import cluster_cpus, init_ray
from pipeline.storage.catalog import Song, describe_catalog
from pipeline.storage.delta import ADD_SCHEMA, Committer, new_run_id
from pipeline.storage.shards import FeatureStore

log = logging.getLogger(__name__)


def plan_batches(n_songs: int, n_cpus: int, *, max_batch: int = 32) -> int:
    """Songs per task: at least 4 tasks per CPU for balance, at most ``max_batch`` songs
    each, in a number of tasks that fills every CPU in each round (300 songs on 2 CPUs: 10
    tasks of 30, not 9 of 32 and a last one of 12 that runs alone)."""
    tasks = max(4 * n_cpus, math.ceil(n_songs / max_batch))
    tasks = math.ceil(tasks / n_cpus) * n_cpus
    return max(1, math.ceil(n_songs / tasks))


def run_extract(catalog: str, out: str, spec: FeatureSpec, *, labels_from_folders: bool = False,
                overwrite: bool = False, address: str | None = None,
                songs_per_task: int | None = None, use_gpu: bool = False,
                commit_every_s: float = 60.0, retry_errors: bool = False) -> dict:
    """Extract every song of ``catalog`` not yet in the feature directory ``out``; a summary.

    A song whose last try failed with a transient error (``missing``, ``io``, ``timeout``) is
    tried again; with ``retry_errors`` every song with an error is."""
    started = time.perf_counter()
    if use_gpu and spec.kind != "musicnn":
        raise ParameterError("--use-gpu applies to --features musicnn (frames run on CPU)")
    describe_catalog(catalog)  # a catalog that is not there stops the run before Ray starts
    store = FeatureStore(out)
    store.prepare(spec, overwrite=overwrite)
    init_ray(address)
    summary = {"ray_start_s": time.perf_counter() - started, "out": out}
    version = store.index.version()
    songs, n = catalog_dataset(catalog, labels_from_folders=labels_from_folders)
    cpus = cluster_cpus()
    done = _done_songs(store, version, retry_errors=retry_errors)
    todo = without(songs, done, partitions=partitions(n)).materialize()
    n_todo = todo.count()
    summary.update(songs=n, skipped=n - n_todo, ok=0, frames=0, audio_seconds=0.0, errors={})
    if n_todo:
        run_id = new_run_id()
        size = songs_per_task or plan_batches(n_todo, cpus)
        # a task per block of `size` songs (the catalog's blocks are far larger); a task
        # whose worker died or whose storage failed runs again, 3 times at most (its part
        # gets a new name; the files of a failed try are never committed)
        with warnings.catch_warnings():  # Ray 2.60 has no named parameter for task retries
            warnings.simplefilter("ignore", DeprecationWarning)
            written = todo.repartition(target_num_rows_per_block=size, strict=True).map_batches(
                extract_batch, batch_size=size, batch_format="pyarrow",
                fn_kwargs={"spec": spec, "out": out, "run_id": run_id}, num_cpus=1,
                num_gpus=1 if use_gpu else 0, max_retries=3, retry_exceptions=[OSError])
        # Ray Data reserves part of the CPUs for each operator of a pipeline; this one has a
        # single operator that needs CPUs, and with the reservation it ran one task at a time
        # until the first finished (2 CPUs: 10 one-second tasks took 6.6 s, without 5.1 s)
        written.context.op_resource_reservation_enabled = False
        committer = Committer(
            store.index, run_id=run_id, version=version, every_s=commit_every_s,
            resolve=resolver(_Rewrite(out, run_id), key_columns=["song_id", "error"],
                             matches=final),
            combine=_Combine(out, run_id))
        progress = Progress(n_todo)
        try:
            totals = commit_stream(written, committer, progress=progress.update)
        finally:
            progress.close()
        for key in ("ok", "frames", "audio_seconds", "errors"):
            summary[key] = totals.get(key, summary[key])
        summary["commits"] = committer.commits
    summary["seconds"] = time.perf_counter() - started
    return summary


def extract_batch(batch: pa.Table, *, spec, out: str, run_id: str) -> pa.Table:
    """Ray Data fn: catalog rows -> one uncommitted part (``extract_shard``) -> its add row,
    with the part's figures in ``counts``."""
    songs = [Song(**row) for row in batch.to_pylist()]
    result = extract_shard(songs, spec, out, f"part-{run_id}-{uuid.uuid4().hex[:12]}",
                           run_id=run_id)
    add = result["add"]
    add["counts"] = json.dumps({**json.loads(add["counts"]), "songs": len(songs),
                                "audio_seconds": result["audio_seconds"]})
    return pa.Table.from_pylist([add], schema=ADD_SCHEMA)


class _Rewrite:
    """A pending part rewritten without some songs (see ``FeatureStore.without_songs``)."""

    def __init__(self, out: str, run_id: str):
        self.out, self.run_id = out, run_id

    def __call__(self, add: dict, song_ids: set[str], name: str) -> dict | None:
        return FeatureStore(self.out).without_songs(add, song_ids, name=name, run_id=self.run_id)


class _Combine:
    """A commit's index files as one, by a Ray task (``FeatureStore.combine``)."""

    def __init__(self, out: str, run_id: str):
        self.out, self.run_id, self.commits = out, run_id, 0

    def __call__(self, adds: list[dict]) -> dict:
        import ray

        self.commits += 1
        name = f"index-{self.run_id}-{self.commits:05d}-{uuid.uuid4().hex[:6]}"
        combine = ray.remote(num_cpus=0, max_retries=3)(_combine)
        return ray.get(combine.remote(self.out, adds, name))


def _combine(out: str, adds: list[dict], name: str) -> dict:
    return FeatureStore(out).combine(adds, name=name)


def _done_songs(store: FeatureStore, version: int, *, retry_errors: bool):
    """The ids of the songs the directory holds at ``version`` that are not tried again
    (frames, or final errors: see ``done_ids``), as a dataset; None when there are none."""
    import ray

    files = store.index_files(version)
    if not files:
        return None
    from pipeline.runtime.catalog import arrow_fs, done_ids

    rows = ray.data.read_parquet(files, filesystem=arrow_fs(store.root))
    return done_ids(rows.select_columns(["song_id", "error"]),
                    retry="all" if retry_errors else "transient")


class Progress:
    """A bar on a terminal, a log line every 10 s otherwise."""

    def __init__(self, total: int, every_s: float = 10.0):
        self.total, self.done, self.failed, self.audio_s = total, 0, 0, 0.0
        self.every_s = every_s
        self.started = self.last = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="song", desc="extract")

    def update(self, counts: dict) -> None:
        songs = counts.get("songs", 0)
        self.done += songs
        self.failed += sum(counts.get("errors", {}).values())
        self.audio_s += counts.get("audio_seconds", 0.0)
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed,
                                 rtf=f"{self.audio_s / (now - self.started):.0f}x")
            self.bar.update(songs)
        elif now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            log.info("extract: %d/%d songs, %d failed, %.0fx realtime", self.done, self.total,
                     self.failed, self.audio_s / (now - self.started))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
