"""Extraction on Ray Data: catalog -> songs not yet done (one shuffle with the table's marks)
-> extract actors that write parts -> the driver commits their index files as they finish."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
import uuid

import pyarrow as pa

from pipeline.errors import ParameterError
from pipeline.extract import extract_shard
from pipeline.features import FeatureSpec
from pipeline.retry import RetryPolicy, utc_now
from pipeline.runtime.catalog import (catalog_dataset, partitions, plan_retries, table_rows,
                                      todo_of, tried_again)
from pipeline.runtime.commit import commit_stream, final, resolver
from pipeline.runtime.cluster import (ACTOR_RETRIES, Limits, RunOptions, actor_pool, connect,
                                      gpus_seen_here, map_bounded, plan_batches, plan_size,
                                      plan_window, wait_for, windows)
from pipeline.storage.catalog import Song, describe_catalog
from pipeline.storage.delta import ADD_SCHEMA, Committer, new_run_id
from pipeline.storage.shards import INDEX_SCHEMA, FeatureStore

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """How an extraction treats its catalog and output: ``labels_from_folders`` (a song's
    first folder under the catalog root is its label), ``overwrite`` (start ``out`` afresh),
    ``songs_per_task`` (None: :func:`plan_batches`), ``use_gpu`` (musicnn: a GPU per
    actor)."""

    labels_from_folders: bool = False
    overwrite: bool = False
    songs_per_task: int | None = None
    use_gpu: bool = False


def run_extract(catalog: str, out: str, spec: FeatureSpec,
                config: ExtractConfig = ExtractConfig(), run: RunOptions = RunOptions()) -> dict:
    """Extract every song of ``catalog`` not yet in the feature directory ``out``; a summary.

    A song whose last try failed for a reason that may pass is tried again as
    ``run.retries`` says. The songs run in windows (``run``), each committed as it ends, so
    the driver's memory does not grow with the catalog (a first extraction of 100M songs is
    one command); the actor pool starts at what the songs need, up to ``run.bounds``.
    """
    started = time.perf_counter()
    if config.use_gpu and spec.kind != "musicnn":
        raise ParameterError("--use-gpu applies to --features musicnn (frames run on CPU)")
    # resolved once, here: a catalog that is not there stops the run before Ray starts
    catalog = describe_catalog(catalog)
    store = FeatureStore(out)
    store.prepare(spec, overwrite=config.overwrite)
    limits = connect(run.address, run.bounds, stage="extract", gpus=int(config.use_gpu))
    summary = {"ray_start_s": time.perf_counter() - started, "out": out,
               "limits": limits.describe()}
    version = store.index.version()
    cpus = plan_size(limits)
    songs, n = catalog_dataset(catalog, labels_from_folders=config.labels_from_folders,
                               cpus=cpus)
    marks = _plan(store, version, retry="all" if run.retry_errors else "transient",
                  retries=run.retries, cpus=cpus)
    todo = todo_of(songs, marks, partitions=partitions(n, cpus)).materialize()
    n_todo = todo.count()
    summary.update(songs=n, skipped=n - n_todo, ok=0, frames=0, audio_seconds=0.0, errors={},
                   retried=tried_again(todo) if marks is not None else 0)
    if n_todo:
        if config.use_gpu:  # before any work: a cluster that cannot bring a GPU stops here
            wait_for([{"GPU": 1}], purpose="extract --use-gpu", timeout_s=run.bounds.wait_s,
                     limits=limits)
        summary.update(_extract(todo, n_todo, store, spec, version=version, config=config,
                                run=run, limits=limits))
    summary["seconds"] = time.perf_counter() - started
    return summary


def _extract(todo, n_todo: int, store: FeatureStore, spec, *, version: int,
             config: ExtractConfig, run: RunOptions, limits: Limits) -> dict:
    """Extract the songs ``todo`` window by window, each committed as it ends (a run killed
    between windows keeps them); the run's figures."""
    run_id = new_run_id()
    size = config.songs_per_task or plan_batches(n_todo, plan_size(limits))
    committer = Committer(
        store.index, run_id=run_id, version=version, every_s=run.commit_every_s,
        resolve=resolver(_Rewrite(store.root, run_id), key_columns=["song_id", "error"],
                         matches=final),
        combine=_Combine(store.root, run_id))
    progress = Progress(n_todo)
    figures = {"windows": 0}
    parts = windows(todo, n_todo, run.songs_per_window or plan_window(limits, size))
    del todo  # the windows hold its rows now
    try:
        for window in parts:
            written = _extracted(window, size, limits, spec=spec, out=store.root, run_id=run_id,
                                 use_gpu=config.use_gpu, retries=run.retries)
            totals = commit_stream(written, committer, progress=progress.update)
            figures["windows"] += 1
    finally:
        progress.close()
    figures.update({key: totals[key] for key in ("ok", "frames", "audio_seconds", "errors")
                    if key in totals})
    figures["commits"] = committer.commits
    return figures


def _extracted(todo, size: int, limits: Limits, *, spec, out: str, run_id: str,
               use_gpu: bool, retries: RetryPolicy):
    """The add rows of the parts written from ``todo``, ``size`` songs each: one per block.

    A cluster that must grow to give the job its bound (or ``use_gpu``: an actor per GPU)
    gets actors, an actor per CPU the job may use, started at what the songs need: the pending
    actors are the demand the autoscaler brings nodes for at once, where Ray Data's tasks
    would grow the cluster a round at a time. Otherwise tasks, on Ray's warm workers (an actor
    pool costs every run ~3 s more to start on 2 CPUs). A batch whose worker died or whose
    storage failed (OSError) runs again, 3 times at most (its part gets a new name; a failed
    try's files are never committed). The blocks are cut before the actors start: they may
    hold every CPU.
    """
    kwargs = {"spec": spec, "out": out, "run_id": run_id, "retries": retries}
    blocks = todo.repartition(target_num_rows_per_block=size, strict=True)
    if use_gpu or limits.grows:
        blocks = blocks.materialize()
        run = {"fn": ExtractWorker, "fn_constructor_kwargs": {**kwargs, "use_gpu": use_gpu},
               "compute": actor_pool(limits.gpus if use_gpu else limits.cpus,
                                     blocks.num_blocks()),
               "retries": ACTOR_RETRIES}
    else:
        run = {"fn": extract_batch, "fn_kwargs": kwargs,
               "retries": {"max_retries": 3, "retry_exceptions": [OSError]}}
    written = map_bounded(blocks, batch_size=size, batch_format="pyarrow", num_cpus=1,
                          num_gpus=1 if use_gpu else 0, **run)
    written.context.actor_task_retry_on_errors = [OSError]
    # Ray Data reserves part of the CPUs for each operator of a pipeline; this one has a
    # single operator that needs CPUs, and with the reservation it ran one task at a time
    # until the first finished (2 CPUs: 10 one-second tasks took 6.6 s, without 5.1 s)
    written.context.op_resource_reservation_enabled = False
    return written


class ExtractWorker:
    """Ray Data actor: :func:`extract_batch` over its batches."""

    def __init__(self, *, spec, out: str, run_id: str, retries: RetryPolicy,
                 use_gpu: bool = False):
        if use_gpu:
            gpus_seen_here("extract --use-gpu")
        self.kwargs = {"spec": spec, "out": out, "run_id": run_id, "retries": retries}

    def __call__(self, batch: pa.Table) -> pa.Table:
        return extract_batch(batch, **self.kwargs)


def extract_batch(batch: pa.Table, *, spec, out: str, run_id: str,
                  retries: RetryPolicy) -> pa.Table:
    """Ray Data fn: catalog rows (with ``tries``) -> one uncommitted part (``extract_shard``)
    -> its add row, with the part's figures in ``counts``."""
    songs = [Song(**row) for row in batch.to_pylist()]
    result = extract_shard(songs, spec, out, f"part-{run_id}-{uuid.uuid4().hex[:12]}",
                           run_id=run_id, retry=retries)
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


def _plan(store: FeatureStore, version: int, *, retry: str, retries: RetryPolicy, cpus: int):
    """The marks of what the directory holds at ``version`` (:func:`plan_retries`): what this
    run leaves alone or tries again; None when it holds nothing."""
    files = store.index_files(version)
    if not files:
        return None
    rows = table_rows(files, _PLAN_COLUMNS, cpus=cpus)
    return plan_retries(rows, retry=retry, policy=retries, now=utc_now())


_PLAN_COLUMNS = pa.schema([INDEX_SCHEMA.field(name) for name in (
    "song_id", "error", "attempt", "run_id")])


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
