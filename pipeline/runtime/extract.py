"""Extraction on Ray: coarse tasks over batches of songs, a bounded number in flight."""

from __future__ import annotations

import logging
import math
import time

from pipeline.extract import extract_shard
from pipeline.features import FeatureSpec
from pipeline.runtime.session import cluster_cpus, init_ray
from pipeline.storage.catalog import load_catalog
from pipeline.storage.shards import FeatureStore
from pipeline.errors import GenresError

log = logging.getLogger(__name__)


def plan_batches(n_songs: int, n_cpus: int, *, max_batch: int = 32) -> int:
    """Songs per task: about 4 tasks per CPU for balance, never more than ``max_batch``."""
    return max(1, min(max_batch, math.ceil(n_songs / (4 * n_cpus))))


def run_extract(catalog: str, out: str, spec: FeatureSpec, *, labels_from_folders: bool = False,
                overwrite: bool = False, address: str | None = None,
                songs_per_task: int | None = None) -> dict:
    """Extract every song of ``catalog`` into the feature directory ``out``; returns a summary."""
    started = time.perf_counter()
    songs = load_catalog(catalog, labels_from_folders=labels_from_folders)
    store = FeatureStore(out)
    store.prepare(spec, overwrite=overwrite)
    removed = store.remove_uncommitted()
    if removed:
        log.info("removed %d uncommitted shard file(s) of an interrupted run", removed)
    done = store.done_song_ids()
    todo = [s for s in songs if s.song_id not in done]
    summary = {"songs": len(songs), "skipped": len(songs) - len(todo), "ok": 0, "frames": 0,
               "audio_seconds": 0.0, "errors": {}, "out": out}
    if todo:
        init_ray(address)
        import ray

        cpus = cluster_cpus()
        size = songs_per_task or plan_batches(len(todo), cpus)
        batches = [todo[i:i + size] for i in range(0, len(todo), size)]
        first = store.next_index()
        task = ray.remote(extract_shard).options(num_cpus=1, max_retries=3,
                                                 retry_exceptions=[OSError])
        pending, failed, finished = {}, [], 0
        queue = list(enumerate(batches))
        max_in_flight = 2 * cpus
        while queue or pending:
            while queue and len(pending) < max_in_flight:
                i, batch = queue.pop(0)
                pending[task.remote(batch, spec, out, first + i)] = batch
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                batch = pending.pop(ref)
                try:
                    part = ray.get(ref)
                except ray.exceptions.RayError as e:
                    failed.append((batch, e))
                    log.error("a task of %d songs failed: %s", len(batch), e)
                    continue
                finished += len(batch)
                _merge(summary, part)
                log.info("extract: %d/%d songs (%d failed so far)", finished, len(todo),
                         sum(summary["errors"].values()))
        if failed:
            lost = sum(len(b) for b, _ in failed)
            raise GenresError(f"{len(failed)} task(s) covering {lost} songs failed "
                              f"({failed[0][1].__class__.__name__}); re-run to retry them")
    summary["seconds"] = time.perf_counter() - started
    return summary


def _merge(summary: dict, part: dict) -> None:
    summary["ok"] += part["ok"]
    summary["frames"] += part["frames"]
    summary["audio_seconds"] += part["audio_seconds"]
    for kind, count in part["errors"].items():
        summary["errors"][kind] = summary["errors"].get(kind, 0) + count
