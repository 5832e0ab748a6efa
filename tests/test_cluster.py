"""Every stage as a `ray job submit` job on a Ray cluster of several nodes on this machine, with
moto's S3 server as the only place the nodes share, and nodes lost mid-stage.

The cluster: a head with no CPUs for tasks (job drivers run there; dashboard on 127.0.0.1,
token auth on) and two worker nodes of one CPU, each with its own GENRES_CACHE and temp folder.
Catalog, features, Train's storage path, bundle and labels are all s3:// URIs. A lost node is
SIGKILLed with every process on it (raylet, object store, workers), then a fresh node joins, as
an autoscaler would replace it. Each test records what happened in ``FAULTS`` (printed at the
end of the module, ``pytest -s`` shows it).
"""

from __future__ import annotations

import io
import json
import os

import pandas as pd
import pytest

from cluster_jobs import GENRES, Job, until, upload_catalog
from servers import MotoServer, RayCluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

PER_GENRE = 8
FAULTS: list[str] = []
DATA = {".parquet", ".csv", ".json", ".ogg", ".wav", ".keras", ".tflite", ".npz", ".h5"}


@pytest.fixture(scope="module")
def catalog(s3, shared_data):
    """24 GTZAN songs, one undecodable file and one missing file, in a bucket."""
    return upload_catalog(s3, shared_data, per_genre=PER_GENRE)


@pytest.fixture(scope="module")
def cluster(s3):
    cluster = RayCluster()
    try:
        for name in ("a", "b"):
            cluster.add_node(name)
        yield cluster
    finally:
        cluster.stop()
        print("\n" + "\n".join(FAULTS))


def _node_running(cluster: RayCluster, *fragments: str):
    """(node, title) of a worker node running a task or actor whose title has ``fragments``."""
    for node in cluster.nodes[1:]:
        for title in node.running():
            if all(fragment in title for fragment in fragments):
                return node, title
    return None


def _lose_node_while(cluster: RayCluster, job: Job, fragment: str | tuple[str, ...],
                     name: str) -> str:
    """Kill the node that runs ``fragment`` for ``job``, then add node ``name``; what happened."""
    fragments = (fragment,) if isinstance(fragment, str) else fragment
    node, title = until(lambda: _node_running(cluster, *fragments), f"task {fragments}", job=job)
    cluster.kill(node)
    cluster.add_node(name)
    return f"node {node.name} killed while running {title.split(' ')[0]}; node {name} added"


def _songs_table(root: str) -> pd.DataFrame:
    from pipeline.storage.shards import FeatureStore

    store = FeatureStore(root)
    return store.index.table().to_pyarrow_table().to_pandas()


def _features(root: str) -> pd.DataFrame:
    from pipeline.storage.shards import FeatureStore

    return FeatureStore(root).read_frames(["song_id", "frame", "mfcc"]).to_pandas()


def _labels(root: str) -> pd.DataFrame:
    from deltalake import DeltaTable

    from pipeline.storage.delta import storage_options

    return DeltaTable(root, storage_options=storage_options(root)).to_pandas()


def _read_json(s3: MotoServer, key: str) -> dict:
    body = s3.client().get_object(Bucket="music", Key=key)["Body"].read()
    return json.load(io.BytesIO(body))


def _check_features(root: str, catalog: dict) -> pd.DataFrame:
    songs = _latest(_songs_table(root), "run_id")
    assert len(songs) == catalog["songs"]
    errors = songs[songs.error.notna()]
    assert {s.rsplit("/", 1)[-1]: e for s, e in zip(errors.song_id, errors.error)} == \
        catalog["errors"]
    frames = _features(root)
    assert frames.song_id.nunique() == catalog["ok"]
    assert not frames.duplicated(["song_id", "frame"]).any()
    return frames


def _check_labels(root: str, catalog: dict) -> pd.DataFrame:
    labels = _latest(_labels(root), "scored_at")
    assert len(labels) == catalog["songs"]
    assert labels.error.notna().sum() == len(catalog["errors"])
    return labels


def _latest(rows: pd.DataFrame, order: str) -> pd.DataFrame:
    """Each song's latest row; only a transient error (the missing file, tried again by a
    run) may have several."""
    repeated = rows[rows.song_id.duplicated(keep=False)]
    assert set(repeated.error) <= {"missing"}, repeated
    return rows.sort_values(order).drop_duplicates("song_id", keep="last")


@pytest.fixture(scope="module")
def undisturbed(cluster, s3, catalog) -> dict:
    """The run each fault is compared with: extract, train and score as jobs, no fault. The
    fault tests read its features, model and labels, in whatever order the tests run."""
    extract = Job(cluster, s3, "extract", catalog["manifest"], "--out", "s3://music/features")
    extracted = extract.succeeded()
    train = Job(cluster, s3, "train", "s3://music/features", "--out", "s3://music/model",
                "--model", "dnn", "--epochs", "2", "--split", "song",
                "--storage-path", "s3://music/runs")
    train.succeeded()
    # scoring decodes the catalog's audio on the worker nodes and loads the bundle there
    score = Job(cluster, s3, "score", catalog["manifest"], "--model", "s3://music/model",
                "--out", "s3://music/labels")
    scored = score.succeeded()
    workers = {n["node_id"] for n in cluster.alive_nodes() if not n["is_head"]}
    return {"jobs": (extract, train, score), "outputs": (extracted, scored),
            "workers": workers, "scorers": {a["node_id"] for a in score.actors("SongScorer")}}


def test_every_stage_runs_as_a_job_with_the_bucket_the_only_shared_place(cluster, s3, catalog,
                                                                          undisturbed):
    (extract, train, score), (extracted, scored) = undisturbed["jobs"], undisturbed["outputs"]
    assert f"{catalog['songs']} songs in" in extracted
    _check_features("s3://music/features", catalog)
    pointer = _read_json(s3, "model/bundle.json")  # the current version, one object
    bundle = _read_json(s3, f"model/{pointer['current']}/bundle.json")
    assert bundle["model"] == "dnn" and bundle["model_id"] == pointer["model_id"]
    labels = _check_labels("s3://music/labels", catalog)
    assert set(labels.genre.dropna()) <= set(GENRES)
    # sized from the nodes up (no autoscaler here): a model actor on each worker node
    assert "up to 2 CPU(s) and 0 GPU(s) (the nodes up now)" in scored
    scorers = undisturbed["scorers"]
    assert scorers == undisturbed["workers"]

    tag = Job(cluster, s3, "tag", catalog["manifest"], "--model", "s3://music/model",
              "--out", "s3://music/labels", "--retry-after", "0")
    output = tag.succeeded()
    # only the missing file is tried again (a transient error, due at once with no wait): no
    # song is labelled twice
    assert f"{catalog['songs'] - 1} already labelled, 1 tried again, 0 labelled, 1 failed " \
           f"(missing=1)" in output
    print(output[-3000:])
    _check_labels("s3://music/labels", catalog)

    # the guard of a schedule: the same submission id again is refused, nothing runs twice
    again = Job(cluster, s3, "tag", catalog["manifest"], "--model", "s3://music/model",
                "--out", "s3://music/labels", "--retry-after", "0", submission_id=tag.id)
    assert again.wait() and again.process.returncode != 0 and "already exists" in again.output
    # no data of the run was left on a node's own disk (Ray's lock files and TensorFlow's
    # autograph sources are there)
    for node in cluster.nodes:
        leftovers = [p for p in (node.folder / "tmp").rglob("*") if p.suffix in DATA]
        assert not leftovers, leftovers
    FAULTS.append(f"no fault: extract {extract.seconds:.0f} s, train {train.seconds:.0f} s, "
                  f"score {score.seconds:.0f} s (model actors on {len(scorers)} nodes), "
                  f"tag (nothing new) {tag.seconds:.0f} s")


def test_a_node_lost_during_extract(cluster, s3, catalog, undisturbed):
    out = "s3://music/features-node-lost"
    job = Job(cluster, s3, "extract", catalog["manifest"], "--out", out, "--songs-per-task", "2")
    what = _lose_node_while(cluster, job, "extract_batch", "c")
    job.succeeded()
    frames = _check_features(out, catalog)
    # the same rows as the run that lost no node
    reference = _features("s3://music/features")
    key = ["song_id", "frame"]
    merged = frames.sort_values(key).reset_index(drop=True)
    expected = reference.sort_values(key).reset_index(drop=True)
    assert merged[key].equals(expected[key])
    assert all((a == b).all() for a, b in zip(merged.mfcc, expected.mfcc))
    FAULTS.append(f"extract: {what}; Ray ran its tasks again, the job succeeded in "
                  f"{job.seconds:.0f} s with every song once and the rows of an undisturbed run")


def test_a_node_lost_during_train(cluster, s3, catalog, undisturbed):
    runs = "runs-node-lost"
    job = Job(cluster, s3, "train", "s3://music/features", "--out", "s3://music/model-node-lost",
              "--model", "dnn", "--epochs", "6", "--patience", "10", "--split", "song",
              "--storage-path", f"s3://music/{runs}")

    def checkpointed():  # Ray Train has registered a checkpoint, not just written its files
        listed = s3.client().list_objects_v2(Bucket="music", Prefix=f"{runs}/")
        return any(o["Key"].endswith("checkpoint_manager_snapshot.json")
                   for o in listed.get("Contents", []))

    until(checkpointed, "checkpoint", job=job)
    what = _lose_node_while(cluster, job, "RayTrainWorker", "d")
    job.succeeded()
    version = "model-node-lost/" + _read_json(s3, "model-node-lost/bundle.json")["current"]
    metrics = _read_json(s3, f"{version}/metrics.json")
    history = pd.read_csv(io.BytesIO(s3.client().get_object(
        Bucket="music", Key=f"{version}/history.csv")["Body"].read()))
    # Train restarted the worker group on the nodes left, from the checkpoint in the bucket
    assert metrics["workers"]["resumed"] >= 1
    assert list(history.epoch) == [1, 2, 3, 4, 5, 6]
    FAULTS.append(f"train: {what}; Ray Train restarted its worker group from the checkpoint in "
                  f"the bucket ({metrics['workers']['resumed']} restart(s)), every epoch ran "
                  f"once, the job succeeded in {job.seconds:.0f} s")


def test_a_node_lost_during_score(cluster, s3, catalog, undisturbed):
    # the batch of the lost actor waits while Ray starts it again elsewhere (with a bounded
    # max_task_retries, the calls refused meanwhile used up the tries: one run in two failed)
    out = "s3://music/labels-node-lost"
    job = Job(cluster, s3, "score", catalog["manifest"], "--model", "s3://music/model",
              "--out", out, "--batch-size", "2")
    what = _lose_node_while(cluster, job, "SongScorer)).submit", "e")
    job.succeeded()
    labels = _check_labels(out, catalog).set_index("song_id").sort_index()
    reference = _check_labels("s3://music/labels", catalog).set_index("song_id").sort_index()
    assert labels.genre.equals(reference.genre)
    FAULTS.append(f"score: {what}; Ray Data started the actor again on a node left, the "
                  f"job succeeded in {job.seconds:.0f} s with one row per song, the labels of "
                  f"an undisturbed run")


def test_the_driver_lost_during_tag_then_a_rerun(cluster, s3, catalog, undisturbed):
    out = "s3://music/labels-driver-lost"
    args = [catalog["manifest"], "--model", "s3://music/model", "--out", out,
            "--batch-size", "1", "--commit-every", "1"]
    job = Job(cluster, s3, "tag", *args)
    until(lambda: _node_running(cluster, "SongScorer"), "scoring", job=job)
    # the job's entrypoint runs under a shell: the driver is its python process
    drivers = [pid for pid, command in cluster.head.processes().items()
               if command.startswith("python -m jobs.tag")]
    assert len(drivers) == 1, [c for c in cluster.head.processes().values() if "jobs.tag" in c]
    os.kill(drivers[0], 9)
    job.wait()
    assert job.process.returncode != 0 and cluster.job_status(job.id) == "FAILED"
    committed = len(_labels(out)) if _exists(s3, out) else 0
    rerun = Job(cluster, s3, "tag", *args)
    rerun.succeeded()
    _check_labels(out, catalog)
    FAULTS.append(f"tag: driver SIGKILLed mid-run, the job FAILED with {committed} songs "
                  f"committed; a new submission labelled the rest in {rerun.seconds:.0f} s, "
                  f"one row per song")


def _exists(s3: MotoServer, uri: str) -> bool:
    key = uri.split("/", 3)[3]
    return bool(s3.client().list_objects_v2(Bucket="music", Prefix=f"{key}/_delta_log/")
                .get("KeyCount"))
