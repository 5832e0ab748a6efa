"""Extraction on Ray: coarse tasks over batches of songs, a bounded number in flight."""

from __future__ import annotations

import logging
import math
import sys
import time

from pipeline.extract import extract_shard
from pipeline.features import FeatureSpec
from pipeline.runtime.session import cluster_cpus, init_ray
from pipeline.storage.catalog import load_catalog
from pipeline.storage.shards import FeatureStore
from pipeline.errors import GenresError, ParameterError

log = logging.getLogger(__name__)


def plan_batches(n_songs: int, n_cpus: int, *, max_batch: int = 32) -> int:
    """Songs per task: about 4 tasks per CPU for balance, never more than ``max_batch``."""
    return max(1, min(max_batch, math.ceil(n_songs / (4 * n_cpus))))


def run_extract(catalog: str, out: str, spec: FeatureSpec, *, labels_from_folders: bool = False,
                overwrite: bool = False, address: str | None = None,
                songs_per_task: int | None = None, use_gpu: bool = False) -> dict:
    """Extract every song of ``catalog`` into the feature directory ``out``; returns a summary."""
    started = time.perf_counter()
    if use_gpu and spec.kind != "musicnn":
        raise ParameterError("--use-gpu applies to --features musicnn (frames run on CPU)")
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
        ray_started = time.perf_counter()
        init_ray(address)
        import ray

        summary["ray_start_s"] = time.perf_counter() - ray_started
        cpus = cluster_cpus()
        size = songs_per_task or plan_batches(len(todo), cpus)
        batches = [todo[i:i + size] for i in range(0, len(todo), size)]
        first = store.next_index()
        task = ray.remote(extract_shard).options(num_cpus=1, num_gpus=1 if use_gpu else 0,
                                                 max_retries=3, retry_exceptions=[OSError])
        progress = Progress(len(todo))
        pending, failed = {}, []
        queue = list(enumerate(batches))
        max_in_flight = 2 * cpus
        while queue or pending:
            while queue and len(pending) < max_in_flight:
                i, batch = queue.pop(0)
                pending[task.remote(batch, spec, out, first + i)] = batch
            ready, _ = ray.wait(list(pending), num_returns=1)
            summary.setdefault("first_task_s", time.perf_counter() - ray_started)
            for ref in ready:
                batch = pending.pop(ref)
                try:
                    part = ray.get(ref)
                except ray.exceptions.RayError as e:
                    failed.append((batch, e))
                    log.error("a task of %d songs failed: %s", len(batch), e)
                    continue
                _merge(summary, part)
                progress.update(len(batch), part["audio_seconds"],
                                failed=sum(summary["errors"].values()))
        progress.close()
        if failed:
            lost = sum(len(b) for b, _ in failed)
            raise GenresError(f"{len(failed)} task(s) covering {lost} songs failed "
                              f"({failed[0][1].__class__.__name__}); re-run to retry them")
    summary["seconds"] = time.perf_counter() - started
    return summary


class Progress:
    """A bar on a terminal, a log line every 10 s otherwise."""

    def __init__(self, total: int, every_s: float = 10.0):
        self.total, self.done, self.audio_s, self.every_s = total, 0, 0.0, every_s
        self.started = self.last = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="song", desc="extract")

    def update(self, songs: int, audio_s: float, *, failed: int) -> None:
        self.done += songs
        self.audio_s += audio_s
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.set_postfix(failed=failed, rtf=f"{self.audio_s / (now - self.started):.0f}x")
            self.bar.update(songs)
        elif now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            log.info("extract: %d/%d songs, %d failed, %.0fx realtime", self.done, self.total,
                     failed, self.audio_s / (now - self.started))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _merge(summary: dict, part: dict) -> None:
    summary["ok"] += part["ok"]
    summary["frames"] += part["frames"]
    summary["audio_seconds"] += part["audio_seconds"]
    for kind, count in part["errors"].items():
        summary["errors"][kind] = summary["errors"].get(kind, 0) + count
