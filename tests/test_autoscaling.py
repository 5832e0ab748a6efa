"""Every stage as a `ray job submit` job on an autoscaling cluster that starts as the head alone.

The cluster: a head with no CPUs for tasks (job drivers, dashboard, autoscaler), and Ray's
autoscaler with two worker types at min 0: ``cpu`` (1 CPU, up to 2 nodes) and ``gpu`` (1 CPU
and a GPU *resource*, up to 1 node; no CUDA device behind it, so TensorFlow runs on its CPU),
a 10 s idle timeout, and moto's S3 server as the only shared place. Nodes are local raylets
that the autoscaler launches and terminates (``fake_nodes.LocalNodes``), each with its own
cache and temp folder.

The jobs pass no size: each reads what the autoscaler may bring up from its config. After
every stage the test waits for the cluster to be the head alone again. ``NODES`` (printed
at the end, ``pytest -s``) says what each stage asked for and got.
"""

from __future__ import annotations

import threading
import time

import pytest

from cluster_jobs import Job, until, upload_catalog
from servers import AutoscalingRayCluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

IDLE_TIMEOUT_S = 10
NODE_TYPES = {
    "cpu": {"resources": {"CPU": 1, "object_store_memory": 300_000_000}, "max_workers": 2},
    "gpu": {"resources": {"CPU": 1, "GPU": 1, "object_store_memory": 300_000_000},
            "max_workers": 1},
}
NODES: list[str] = []


@pytest.fixture(scope="module")
def cluster(s3):
    cluster = AutoscalingRayCluster(NODE_TYPES, idle_timeout_s=IDLE_TIMEOUT_S)
    try:
        yield cluster
    finally:
        cluster.stop()
        print("\n" + "\n".join(NODES))


class Timeline:
    """The cluster's alive nodes every half second, from a thread: what a stage got."""

    def __init__(self, cluster: AutoscalingRayCluster):
        self.cluster, self.samples, self.stop = cluster, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.5):
            try:
                nodes = self.cluster.alive_nodes()
            except OSError:
                continue
            self.samples.append((time.monotonic(), sorted(_kind(n) for n in nodes
                                                          if not n["is_head"])))

    def most(self, since: float) -> dict[str, int]:
        """The most nodes of each kind alive at once since ``since``."""
        most: dict[str, int] = {}
        for at, kinds in self.samples:
            if at >= since:
                for kind in set(kinds):
                    most[kind] = max(most.get(kind, 0), kinds.count(kind))
        return most

    def close(self):
        self.stop.set()
        self.thread.join()


def _kind(node: dict) -> str:
    return "gpu" if node["resources"].get("GPU") else "cpu"


def _gpu_node(cluster) -> set[str]:
    return {e["node_id"] for e in cluster.events() if e["node_type"] == "gpu"}


def _back_to_the_head(cluster, stage: str) -> float:
    """Seconds until only the head is alive (the autoscaler gave every node back)."""
    started = time.monotonic()
    until(lambda: all(n["is_head"] for n in cluster.alive_nodes()),
          f"return to the head alone after {stage}", timeout=120)
    return time.monotonic() - started


def test_each_stage_grows_the_cluster_from_the_head_and_gives_it_back(cluster, s3,
                                                                       shared_data):
    catalog = upload_catalog(s3, shared_data, per_genre=4)
    assert all(n["is_head"] for n in cluster.alive_nodes())
    timeline = Timeline(cluster)
    limits = "up to 2 CPU(s) and 1 GPU(s) (the autoscaler's "
    stages = [
        ("extract", [catalog["manifest"], "--out", "s3://music/features"], None),
        ("train", ["s3://music/features", "--out", "s3://music/model", "--model", "dnn",
                   "--epochs", "2", "--split", "song", "--use-gpu",
                   "--storage-path", "s3://music/runs"], "RayTrainWorker"),
        ("score", [catalog["manifest"], "--model", "s3://music/model",
                   "--out", "s3://music/labels-gpu", "--use-gpu"], "SongScorer"),
        ("score", [catalog["manifest"], "--model", "s3://music/model",
                   "--out", "s3://music/labels"], "SongScorer"),
        ("tag", [catalog["manifest"], "--model", "s3://music/model",
                 "--out", "s3://music/labels", "--retry-after", "0"], None),
    ]
    try:
        for stage, args, actor in stages:
            started = time.monotonic()
            job = Job(cluster, s3, stage, *args)
            output = job.succeeded()
            assert limits in output, output[-2000:]
            got = timeline.most(started)
            placed = {a["node_id"] for a in job.actors(actor)} if actor else set()
            back = _back_to_the_head(cluster, stage)
            # nothing of the job holds resources: no placement group left, no actor alive but
            # Ray Data's detached bookkeeping actors, which ask for no CPU and live on the head
            assert all(g["state"] == "REMOVED" for g in cluster.placement_groups())
            assert not [a for a in job.actors("") if a["state"] != "DEAD"
                        and not a.get("is_detached")]
            gpu = "--use-gpu" in args
            name = f"{stage}{' --use-gpu' if gpu else ''}"
            if gpu:  # the GPU work ran on the GPU node, brought back on demand
                assert got.get("gpu") == 1 and placed and placed <= _gpu_node(cluster), name
            elif actor:  # CPU scoring: a model actor on each CPU node, none on the GPU node
                assert got == {"cpu": 2} and len(placed) == 2, (name, got)
            NODES.append(f"{name}: {job.seconds:.0f} s, at most {got or 'no worker nodes'} "
                         f"at once{f', {actor} on {len(placed)} node(s)' if actor else ''}; "
                         f"the head alone again {back:.0f} s after the job")
            if stage == "extract":
                assert "14 songs in" in output and got == {"cpu": 2}, (got, output[-2000:])
            if stage == "tag":
                assert "13 already labelled, 1 tried again, 0 labelled, 1 failed (missing=1)" \
                    in output
    finally:
        timeline.close()
    launched = [e["node_type"] for e in cluster.events() if e["event"] == "launched"]
    NODES.append(f"launched over the run: {launched.count('cpu')} cpu, "
                 f"{launched.count('gpu')} gpu node(s)")
    assert launched.count("gpu") >= 2 and launched.count("cpu") >= 2
    assert all(n["is_head"] for n in cluster.alive_nodes())
